//! One async lock per container name, created on demand and dropped when unused, so the map
//! never grows with names that only appeared in requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

pub struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let lock = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone();
        KeyGuard {
            locks: self,
            key: key.to_string(),
            guard: Some(lock.lock_owned().await),
        }
    }

    /// Both names, always in the same order (no deadlock between `a,b` and `b,a`).
    pub async fn lock_pair(&self, a: &str, b: &str) -> Vec<KeyGuard<'_>> {
        let (first, second) = if a <= b { (a, b) } else { (b, a) };
        let mut guards = vec![self.lock(first).await];
        if first != second {
            guards.push(self.lock(second).await);
        }
        guards
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.guard = None;
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it: nobody waits for this name.
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serialises_per_name_and_forgets_unused_names() {
        let locks = Arc::new(KeyedLocks::default());
        let g = locks.lock("a").await;
        let other = locks.lock("b").await;
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("a").await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(g);
        waiter.await.unwrap();
        drop(other);
        assert_eq!(locks.len(), 0);
        let pair = locks.lock_pair("y", "x").await;
        assert_eq!(pair.len(), 2);
        drop(pair);
        assert_eq!(locks.lock_pair("z", "z").await.len(), 1);
        assert_eq!(locks.len(), 0);
    }
}
