//! Trace messages -> one path per packet: the steps that share a trace id, in the order the
//! kernel sent them. The kernel never says that a packet is done, so a path is complete when a
//! drop (or stolen) verdict ends it, when no message came for it for the idle time, or when the
//! caller flushes; each path says which.
//!
//! The end of a chain reached without a verdict is reported as a `continue` that names no rule
//! (kernel 6.18 sends it as a rule message, older kernels as a return message): here it becomes a
//! [`Verdict::Return`] naming no rule, and is left out where the base chain's policy follows it.

use std::collections::HashMap;

use super::{
    message::{Family, TraceMessage, TraceType, Tuple, Verdict},
    rules::RuleRef,
};

/// Steps kept per path; more are counted in [`PacketPath::truncated`] (a loop in the ruleset
/// cannot grow a path without bound).
pub const MAX_STEPS: usize = 256;

/// The base chains of iptables' tables, named after their hooks.
const HOOK_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// One step of a packet's walk through the ruleset: which rule, or which base chain's policy,
/// gave which verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleVerdict {
    /// The trace id: the same for every step of one packet (a hash of the kernel's skb).
    pub id: u32,
    /// When the message was read, CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns's clock); the
    /// kernel does not timestamp trace messages.
    pub time: u64,
    /// The packet, from the first message about it that carried its headers.
    pub tuple: Option<Tuple>,
    /// The family of the table.
    pub family: Family,
    /// The table's name (`filter` for iptables-nft's filter table).
    pub table: String,
    /// The chain the step happened in.
    pub chain: String,
    /// The rule that gave the verdict; `None` for a policy and for the end of a non-base chain.
    pub rule: Option<RuleRef>,
    /// What the rule (or policy) decided.
    pub verdict: Verdict,
    /// Whether the verdict is the base chain's policy (no rule matched to the chain's end).
    pub policy: bool,
}

/// Why a path was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathEnd {
    /// A drop or stolen verdict: nothing can follow.
    Final,
    /// No message about the packet for the idle time.
    Idle,
    /// The caller flushed the open paths.
    Flushed,
    /// Too many packets were open at once; the one idle longest was handed out early.
    Evicted,
    /// The trace id came back with another packet's headers (the kernel's ids are hashes).
    Reused,
}

/// Every step of one traced packet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PacketPath {
    /// The trace id.
    pub id: u32,
    /// The packet's addresses, ports and protocol (`None` if no message carried its headers).
    pub tuple: Option<Tuple>,
    /// The steps in rules other than tracer's own, in order.
    pub steps: Vec<RuleVerdict>,
    /// Trace messages about this packet, tracer's own chains' included.
    pub messages: u32,
    /// Steps beyond [`MAX_STEPS`], not kept.
    pub truncated: u32,
    /// When the first and the last message were read (CLOCK_MONOTONIC nanoseconds).
    pub first: u64,
    /// See `first`.
    pub last: u64,
    /// Why the path was handed out.
    pub end: PathEnd,
}

impl PacketPath {
    /// The step that decided the packet's fate: the last one with a final verdict (accept, drop,
    /// queue, ...); the packet may have crossed several hooks, each ending with an accept.
    pub fn decided(&self) -> Option<&RuleVerdict> {
        self.steps.iter().rev().find(|s| s.verdict.is_final())
    }

    /// How the deciding step's table reached the deciding chain within its hook: from the base
    /// chain through the chains jumped (or gone) to, those returned from left out
    /// (`FORWARD`, `cali-FORWARD`, `cali-to-wl-dispatch`, `cali-tw-…`). The base chain is the
    /// nearest earlier step of the same table in a chain named after a hook (iptables' tables),
    /// else the first step of the table's run of steps. Empty when nothing was decided.
    pub fn hook_walk(&self) -> Vec<&str> {
        let Some(at) = self.steps.iter().rposition(|s| s.verdict.is_final()) else {
            return Vec::new();
        };
        let decided = &self.steps[at];
        let mut start = at;
        while start > 0 && !HOOK_CHAINS.contains(&self.steps[start].chain.as_str()) {
            let prev = &self.steps[start - 1];
            if (prev.family, prev.table.as_str()) != (decided.family, decided.table.as_str()) {
                break;
            }
            start -= 1;
        }
        // A call stack: a chain seen again is the one a jump returned to.
        let mut walk: Vec<&str> = Vec::new();
        for step in &self.steps[start..=at] {
            match walk.iter().position(|c| *c == step.chain) {
                Some(i) => walk.truncate(i + 1),
                None => walk.push(&step.chain),
            }
        }
        walk
    }

    /// The chains the packet went through, in order, without repeats in a row.
    pub fn chains(&self) -> Vec<&str> {
        let mut chains: Vec<&str> = self.steps.iter().map(|s| s.chain.as_str()).collect();
        chains.dedup();
        chains
    }
}

/// The open paths, and the completed ones not handed out yet.
pub(crate) struct Assembler {
    open: HashMap<u32, PacketPath>,
    done: Vec<PacketPath>,
    max_open: usize,
    /// Paths handed out early because `max_open` were open.
    pub evicted: u64,
}

impl Assembler {
    pub(crate) fn new(max_open: usize) -> Assembler {
        Assembler {
            open: HashMap::new(),
            done: Vec::new(),
            max_open: max_open.max(1),
            evicted: 0,
        }
    }

    fn close(&mut self, id: u32, end: PathEnd) {
        if let Some(mut path) = self.open.remove(&id) {
            path.end = end;
            self.done.push(path);
        }
    }

    /// Adds one message; `own` when it is about tracer's own table (counted, not a step).
    pub(crate) fn push(&mut self, msg: TraceMessage, rule: Option<RuleRef>, own: bool, now: u64) {
        if let (Some(tuple), Some(path)) = (msg.tuple, self.open.get(&msg.id))
            && path.tuple.is_some_and(|t| t != tuple)
        {
            self.close(msg.id, PathEnd::Reused);
        }
        if !self.open.contains_key(&msg.id) && self.open.len() >= self.max_open {
            let oldest = self.open.values().min_by_key(|p| p.last).map(|p| p.id);
            if let Some(oldest) = oldest {
                self.close(oldest, PathEnd::Evicted);
                self.evicted += 1;
            }
        }
        let path = self.open.entry(msg.id).or_insert_with(|| PacketPath {
            id: msg.id,
            tuple: None,
            steps: Vec::new(),
            messages: 0,
            truncated: 0,
            first: now,
            last: now,
            end: PathEnd::Idle,
        });
        path.tuple = path.tuple.or(msg.tuple);
        path.last = now;
        path.messages += 1;
        let ends = matches!(msg.verdict, Verdict::Drop | Verdict::Stolen);
        let verdict = match msg.verdict {
            Verdict::Continue if msg.handle.is_none() => Verdict::Return,
            v => v,
        };
        let policy = msg.kind == TraceType::Policy;
        if policy
            && path.steps.last().is_some_and(|s| {
                s.verdict == Verdict::Return
                    && s.rule.is_none()
                    && (s.table.as_str(), s.chain.as_str())
                        == (msg.table.as_str(), msg.chain.as_str())
            })
        {
            path.steps.pop();
        }
        if !own {
            if path.steps.len() < MAX_STEPS {
                path.steps.push(RuleVerdict {
                    id: msg.id,
                    time: now,
                    tuple: path.tuple,
                    family: msg.family,
                    table: msg.table,
                    chain: msg.chain,
                    rule,
                    verdict,
                    policy,
                });
            } else {
                path.truncated += 1;
            }
        }
        if ends {
            self.close(msg.id, PathEnd::Final);
        }
    }

    /// Closes the paths without a message for `idle_ns` nanoseconds before `now`.
    pub(crate) fn expire(&mut self, now: u64, idle_ns: u64) {
        let idle: Vec<u32> = self
            .open
            .values()
            .filter(|p| now.saturating_sub(p.last) >= idle_ns)
            .map(|p| p.id)
            .collect();
        for id in idle {
            self.close(id, PathEnd::Idle);
        }
    }

    /// Closes every open path.
    pub(crate) fn flush(&mut self) {
        let ids: Vec<u32> = self.open.keys().copied().collect();
        for id in ids {
            self.close(id, PathEnd::Flushed);
        }
    }

    /// The completed paths, oldest first.
    pub(crate) fn take(&mut self) -> Vec<PacketPath> {
        let mut done = std::mem::take(&mut self.done);
        done.sort_by_key(|p| p.first);
        done
    }

    /// Paths still open.
    pub(crate) fn open(&self) -> usize {
        self.open.len()
    }
}
