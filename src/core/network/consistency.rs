//! Whether the kernel holds what the stored topology says (`gantry check`): the elements of
//! gantry's nftables table, set by set, against those the snapshot and journal imply. It
//! reads only: no file is changed, nothing is applied. A daemon that runs keeps the two in
//! step; a difference means the table was flushed or changed behind gantry's back (an
//! `nft flush ruleset`, a firewall reload) and is repaired by restarting gantry.

use std::collections::BTreeMap;

use serde_json::Value;

use super::nft::TABLE;
use super::state::StateStore;
use super::{elements_all, DataplaneConfig, NetResult, NetworkError};

/// Elements per set or map: what the stored topology implies, and what the kernel has
/// (`None`: gantry's table does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consistency {
    pub containers: usize,
    pub stored: BTreeMap<String, usize>,
    pub kernel: Option<BTreeMap<String, usize>>,
}

impl Consistency {
    /// The sets whose element counts differ, as `name: stored N, kernel M`.
    pub fn differences(&self) -> Vec<String> {
        let empty = BTreeMap::new();
        let kernel = self.kernel.as_ref().unwrap_or(&empty);
        let mut names: Vec<&String> = self.stored.keys().chain(kernel.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|n| {
                let (s, k) = (
                    self.stored.get(n).copied().unwrap_or(0),
                    kernel.get(n).copied().unwrap_or(0),
                );
                (s != k).then(|| format!("{n}: stored {s}, kernel {k}"))
            })
            .collect()
    }
}

/// Compares the stored topology with the kernel's table, in `config.netns` when given (on a
/// thread of its own, which enters it).
pub fn check(config: &DataplaneConfig) -> NetResult<Consistency> {
    let config = config.clone();
    std::thread::spawn(move || {
        if let Some(path) = &config.netns {
            super::enter_and_verify(path)?;
        }
        compare(&config)
    })
    .join()
    .map_err(|_| NetworkError::Kernel("the check thread panicked".into()))?
}

fn compare(config: &DataplaneConfig) -> NetResult<Consistency> {
    let state =
        StateStore::read(&config.state_dir).map_err(|e| NetworkError::Storage(e.to_string()))?;
    let mut stored = BTreeMap::new();
    for e in elements_all(&state) {
        *stored.entry(e.set_name().to_string()).or_insert(0) += 1;
    }
    Ok(Consistency {
        containers: state.containers.len(),
        stored,
        kernel: kernel_counts()?,
    })
}

/// Elements per set and map of gantry's table; `None` when there is no such table.
fn kernel_counts() -> NetResult<Option<BTreeMap<String, usize>>> {
    let args = ["list", "table", "inet", TABLE];
    let raw = match nftables::helper::get_current_ruleset_raw(Some("nft"), args) {
        Ok(raw) => raw,
        Err(nftables::helper::NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            return Ok(None)
        }
        Err(e) => return Err(NetworkError::Kernel(e.to_string())),
    };
    let json: Value =
        serde_json::from_str(&raw).map_err(|e| NetworkError::Kernel(format!("nft -j: {e}")))?;
    Ok(Some(count_elements(&json)))
}

fn count_elements(json: &Value) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let objects = json["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for o in objects {
        for kind in ["set", "map"] {
            let Some(name) = o[kind]["name"].as_str() else {
                continue;
            };
            let n = o[kind]["elem"].as_array().map_or(0, Vec::len);
            counts.insert(name.to_string(), n);
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_counted_per_set_and_map() {
        let json: Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {}}, {"table": {"name": "gantry"}},
                {"set": {"name": "inet4", "elem": ["198.18.0.2", "198.18.0.3"]}},
                {"set": {"name": "links4"}},
                {"map": {"name": "fwdport", "elem": [[{"concat": ["tcp", 80]}, 8080]]}}]}"#,
        )
        .unwrap();
        let counts = count_elements(&json);
        assert_eq!(counts["inet4"], 2);
        assert_eq!(counts["links4"], 0);
        assert_eq!(counts["fwdport"], 1);
        let c = Consistency {
            containers: 2,
            stored: [("inet4".to_string(), 2), ("fwd4".to_string(), 1)].into(),
            kernel: Some(counts),
        };
        assert_eq!(
            c.differences(),
            vec!["fwd4: stored 1, kernel 0", "fwdport: stored 0, kernel 1"]
        );
    }
}
