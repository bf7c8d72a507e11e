//! What the fake records of each call, and the behaviour a test asks of it: delays, gates
//! (calls that must be in flight together), holds (calls that never return) and failures.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Barrier};

use crate::core::engine::EngineError;

/// One call the engine received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: &'static str,
    /// The argument naming what the call is about, as the caller passed it (an id, a name,
    /// an image reference); empty for calls about nothing in particular.
    pub target: String,
    /// The name of the container or network `target` resolved to, when it did.
    pub name: Option<String>,
    /// A further argument worth telling apart (a stop timeout).
    pub arg: Option<String>,
    started: Instant,
    ended: Option<Instant>,
    /// Ordinals of the start and the end among all starts and ends: their order.
    start_seq: u64,
    end_seq: Option<u64>,
    /// The fake made it wait (a delay, a gate, a hold): it took time and may overlap others.
    held: bool,
}

impl Call {
    /// `method target[ arg]`, as the caller made it.
    pub fn text(&self) -> String {
        let mut s = format!("{} {}", self.method, self.target);
        if let Some(a) = &self.arg {
            s.push(' ');
            s.push_str(a);
        }
        s
    }

    /// Whether `pattern` names this call: `method` or `method *` (every call of it), or
    /// `method x` where x is the target or the name it resolved to.
    pub fn is(&self, pattern: &str) -> bool {
        let (method, target) = pattern.split_once(' ').unwrap_or((pattern, "*"));
        method == self.method
            && (target == "*" || target == self.target || Some(target) == self.name.as_deref())
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let took = match self.ended {
            Some(end) => format!("{}ms", (end - self.started).as_millis()),
            None => "unfinished".into(),
        };
        write!(f, "{} ({took})", self.text())
    }
}

/// The calls in the order they were made.
#[derive(Default)]
pub(super) struct CallLog {
    calls: Mutex<Vec<Call>>,
    seq: Mutex<u64>,
    /// Bumped at every new call, for [`CallLog::reached`].
    made: watch::Sender<()>,
}

impl CallLog {
    fn next_seq(&self) -> u64 {
        let mut seq = self.seq.lock().unwrap();
        *seq += 1;
        *seq
    }

    /// Records a new call; returns it, and its handle for [`CallLog::end`] (its start ordinal,
    /// which stays valid across a [`CallLog::clear`]).
    pub fn begin(
        &self,
        method: &'static str,
        target: &str,
        name: Option<String>,
        arg: Option<String>,
    ) -> (u64, Call) {
        let call = Call {
            method,
            target: target.to_string(),
            name,
            arg,
            started: Instant::now(),
            ended: None,
            start_seq: self.next_seq(),
            end_seq: None,
            held: false,
        };
        self.calls.lock().unwrap().push(call.clone());
        self.made.send_replace(());
        (call.start_seq, call)
    }

    fn update(&self, handle: u64, change: impl FnOnce(&mut Call)) {
        let mut calls = self.calls.lock().unwrap();
        if let Some(c) = calls.iter_mut().find(|c| c.start_seq == handle) {
            change(c);
        }
    }

    pub fn set_held(&self, handle: u64) {
        self.update(handle, |c| c.held = true);
    }

    pub fn end(&self, handle: u64) {
        let seq = self.next_seq();
        self.update(handle, |c| {
            c.ended = Some(Instant::now());
            c.end_seq = Some(seq);
        });
    }

    pub fn all(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.calls.lock().unwrap().clear();
    }

    /// The one call `pattern` names; panics (listing the calls) unless there is exactly one.
    pub fn one(&self, pattern: &str) -> Call {
        let calls = self.all();
        let found: Vec<&Call> = calls.iter().filter(|c| c.is(pattern)).collect();
        match found.as_slice() {
            [c] => (*c).clone(),
            _ => panic!("{} calls are {pattern}: {}", found.len(), listing(&calls)),
        }
    }

    /// The call `a` had returned before the call `b` was made.
    pub fn finished_before(&self, a: &str, b: &str) -> bool {
        let (a, b) = (self.one(a), self.one(b));
        a.end_seq.is_some_and(|end| end < b.start_seq)
    }

    /// The most held calls in flight at once.
    pub fn max_in_flight(&self) -> usize {
        let mut steps: Vec<(u64, i64)> = Vec::new();
        for c in self.all().iter().filter(|c| c.held) {
            steps.push((c.start_seq, 1));
            steps.extend(c.end_seq.map(|e| (e, -1)));
        }
        steps.sort_unstable();
        let mut now = 0i64;
        let mut max = 0i64;
        for (_, step) in steps {
            now += step;
            max = max.max(now);
        }
        usize::try_from(max).unwrap_or_default()
    }

    /// Waits until a call `pattern` names has been made.
    pub async fn reached(&self, pattern: &str) {
        let mut made = self.made.subscribe();
        while !self.all().iter().any(|c| c.is(pattern)) {
            made.changed()
                .await
                .expect("the call log lives as long as the fake");
        }
    }
}

pub(super) fn listing(calls: &[Call]) -> String {
    let lines: Vec<String> = calls.iter().map(ToString::to_string).collect();
    format!("[{}]", lines.join(", "))
}

/// How the fake treats the calls a pattern names (see [`Call::is`]).
#[derive(Default)]
pub(super) struct Rules {
    delays: Vec<(String, Duration)>,
    gates: Vec<(String, Arc<Barrier>)>,
    holds: Vec<String>,
    failures: Vec<(String, EngineError)>,
}

/// What a call has to go through before the fake serves it.
pub(super) struct Treatment {
    pub gate: Option<Arc<Barrier>>,
    pub delay: Option<Duration>,
    pub hold: bool,
    pub failure: Option<EngineError>,
}

impl Treatment {
    pub fn held(&self) -> bool {
        self.gate.is_some() || self.delay.is_some() || self.hold
    }
}

impl Rules {
    pub fn delay(&mut self, pattern: &str, delay: Duration) {
        self.delays.push((pattern.to_string(), delay));
    }

    pub fn gate(&mut self, patterns: &[&str]) {
        let barrier = Arc::new(Barrier::new(patterns.len()));
        for p in patterns {
            self.gates.push((p.to_string(), barrier.clone()));
        }
    }

    pub fn hold(&mut self, pattern: &str) {
        self.holds.push(pattern.to_string());
    }

    pub fn fail_next(&mut self, pattern: &str, error: EngineError) {
        self.failures.push((pattern.to_string(), error));
    }

    /// The treatment of `call`; a failure is used up by the call it hits. A gate named for
    /// the call itself wins over one for all calls of its method.
    pub fn treat(&mut self, call: &Call) -> Treatment {
        let exact = |p: &String| p.contains(' ') && !p.ends_with(" *") && call.is(p);
        let gate = self
            .gates
            .iter()
            .find(|(p, _)| exact(p))
            .or_else(|| self.gates.iter().find(|(p, _)| call.is(p)))
            .map(|(_, b)| b.clone());
        let delay = self.delays.iter().find(|(p, _)| call.is(p)).map(|d| d.1);
        let hold = self.holds.iter().any(|p| call.is(p));
        let failure = self
            .failures
            .iter()
            .position(|(p, _)| call.is(p))
            .map(|i| self.failures.remove(i).1);
        Treatment {
            gate,
            delay,
            hold,
            failure,
        }
    }
}
