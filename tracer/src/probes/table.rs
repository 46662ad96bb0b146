//! Every eBPF program the tracer has.

/// A pipeline stage, named as the kernel names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Pod links (TC): queries and answers entering and leaving pods.
    Device,
    /// iptables/nftables verdicts.
    Netfilter,
    /// NAT rewrites (DNAT to a pod, un-DNAT of its answer).
    Nat,
    /// Conntrack confirmation of new entries.
    Conntrack,
    /// Packets freed with a drop reason, and ICMP errors.
    Drop,
    /// Sockets refusing packets.
    Socket,
}

/// How a program hooks into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// TC ingress (packets a pod sends) on pod links.
    TcIngress,
    /// TC egress (packets a pod receives) on pod links.
    TcEgress,
    /// A BTF-typed tracepoint (tp_btf).
    Tracepoint,
    /// kprobe on function entry.
    Kprobe,
    /// kretprobe on function return.
    Kretprobe,
    /// fexit (ftrace function hook) on function return.
    Fexit,
}

/// One program.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    /// Program name in the eBPF object (`<stage>_<hook>`).
    pub program: &'static str,
    /// Its stage.
    pub stage: Stage,
    /// How it hooks.
    pub hook: Hook,
    /// Kernel symbols (tracepoint or function names) to try, newest name first.
    pub targets: &'static [&'static str],
}

const IPT: &[&str] = &["ipt_do_table"];
const NFT: &[&str] = &["nft_do_chain"];
// Renamed in 5.x: nf_nat_ipv4_manip_pkt became the family-independent nf_nat_manip_pkt.
const NAT: &[&str] = &["nf_nat_manip_pkt", "nf_nat_ipv4_manip_pkt"];
const CONFIRM: &[&str] = &["__nf_conntrack_confirm"];

/// Every program, in pipeline order.
pub const PROBES: &[Probe] = &[
    Probe {
        program: "device_tc_ingress",
        stage: Stage::Device,
        hook: Hook::TcIngress,
        targets: &[],
    },
    Probe {
        program: "device_tc_egress",
        stage: Stage::Device,
        hook: Hook::TcEgress,
        targets: &[],
    },
    Probe {
        program: "netfilter_ipt_fexit",
        stage: Stage::Netfilter,
        hook: Hook::Fexit,
        targets: IPT,
    },
    Probe {
        program: "netfilter_ipt_enter",
        stage: Stage::Netfilter,
        hook: Hook::Kprobe,
        targets: IPT,
    },
    Probe {
        program: "netfilter_ipt_exit",
        stage: Stage::Netfilter,
        hook: Hook::Kretprobe,
        targets: IPT,
    },
    Probe {
        program: "netfilter_nft_fexit",
        stage: Stage::Netfilter,
        hook: Hook::Fexit,
        targets: NFT,
    },
    Probe {
        program: "netfilter_nft_enter",
        stage: Stage::Netfilter,
        hook: Hook::Kprobe,
        targets: NFT,
    },
    Probe {
        program: "netfilter_nft_exit",
        stage: Stage::Netfilter,
        hook: Hook::Kretprobe,
        targets: NFT,
    },
    Probe {
        program: "nat_manip_fexit",
        stage: Stage::Nat,
        hook: Hook::Fexit,
        targets: NAT,
    },
    Probe {
        program: "nat_manip_enter",
        stage: Stage::Nat,
        hook: Hook::Kprobe,
        targets: NAT,
    },
    Probe {
        program: "nat_manip_exit",
        stage: Stage::Nat,
        hook: Hook::Kretprobe,
        targets: NAT,
    },
    Probe {
        program: "conntrack_confirm_fexit",
        stage: Stage::Conntrack,
        hook: Hook::Fexit,
        targets: CONFIRM,
    },
    Probe {
        program: "conntrack_confirm_enter",
        stage: Stage::Conntrack,
        hook: Hook::Kprobe,
        targets: CONFIRM,
    },
    Probe {
        program: "conntrack_confirm_exit",
        stage: Stage::Conntrack,
        hook: Hook::Kretprobe,
        targets: CONFIRM,
    },
    Probe {
        program: "drop_kfree_skb",
        stage: Stage::Drop,
        hook: Hook::Tracepoint,
        targets: &["kfree_skb"],
    },
    Probe {
        program: "drop_icmp_send",
        stage: Stage::Drop,
        hook: Hook::Tracepoint,
        targets: &["icmp_send"],
    },
    Probe {
        program: "socket_udp_fail_queue",
        stage: Stage::Socket,
        hook: Hook::Tracepoint,
        targets: &["udp_fail_queue_rcv_skb"],
    },
    Probe {
        program: "socket_rcvqueue_full",
        stage: Stage::Socket,
        hook: Hook::Tracepoint,
        targets: &["sock_rcvqueue_full"],
    },
];
