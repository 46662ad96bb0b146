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

/// What a program needs of the kernel beyond its hook and target existing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing more.
    Nothing,
    /// A tracepoint with between `min` and `max` arguments: its layout changed between kernels,
    /// and a program reading an argument the tracepoint lacks is refused by the verifier.
    Args {
        /// Fewest arguments.
        min: usize,
        /// Most arguments.
        max: usize,
        /// What the count means, for the plan's skip reason.
        layout: &'static str,
    },
    /// nf_tables' structs in BTF (`nft_chain`, `nft_table`, `nft_pktinfo`).
    NftStructs,
    /// xtables' structs in BTF (`xt_table`, `nf_hook_state`).
    XtStructs,
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
    /// What else it needs.
    pub needs: Need,
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
        needs: Need::Nothing,
    },
    Probe {
        program: "device_tc_egress",
        stage: Stage::Device,
        hook: Hook::TcEgress,
        targets: &[],
        needs: Need::Nothing,
    },
    Probe {
        program: "netfilter_ipt_fexit",
        stage: Stage::Netfilter,
        hook: Hook::Fexit,
        targets: IPT,
        needs: Need::XtStructs,
    },
    Probe {
        program: "netfilter_ipt_enter",
        stage: Stage::Netfilter,
        hook: Hook::Kprobe,
        targets: IPT,
        needs: Need::XtStructs,
    },
    Probe {
        program: "netfilter_ipt_exit",
        stage: Stage::Netfilter,
        hook: Hook::Kretprobe,
        targets: IPT,
        needs: Need::XtStructs,
    },
    Probe {
        program: "netfilter_nft_fexit",
        stage: Stage::Netfilter,
        hook: Hook::Fexit,
        targets: NFT,
        needs: Need::NftStructs,
    },
    Probe {
        program: "netfilter_nft_enter",
        stage: Stage::Netfilter,
        hook: Hook::Kprobe,
        targets: NFT,
        needs: Need::NftStructs,
    },
    Probe {
        program: "netfilter_nft_exit",
        stage: Stage::Netfilter,
        hook: Hook::Kretprobe,
        targets: NFT,
        needs: Need::NftStructs,
    },
    Probe {
        program: "nat_manip_fexit",
        stage: Stage::Nat,
        hook: Hook::Fexit,
        targets: NAT,
        needs: Need::Nothing,
    },
    Probe {
        program: "nat_manip_enter",
        stage: Stage::Nat,
        hook: Hook::Kprobe,
        targets: NAT,
        needs: Need::Nothing,
    },
    Probe {
        program: "nat_manip_exit",
        stage: Stage::Nat,
        hook: Hook::Kretprobe,
        targets: NAT,
        needs: Need::Nothing,
    },
    Probe {
        program: "conntrack_confirm_fexit",
        stage: Stage::Conntrack,
        hook: Hook::Fexit,
        targets: CONFIRM,
        needs: Need::Nothing,
    },
    Probe {
        program: "conntrack_confirm_enter",
        stage: Stage::Conntrack,
        hook: Hook::Kprobe,
        targets: CONFIRM,
        needs: Need::Nothing,
    },
    Probe {
        program: "conntrack_confirm_exit",
        stage: Stage::Conntrack,
        hook: Hook::Kretprobe,
        targets: CONFIRM,
        needs: Need::Nothing,
    },
    Probe {
        program: "drop_kfree_skb",
        stage: Stage::Drop,
        hook: Hook::Tracepoint,
        targets: &["kfree_skb"],
        needs: Need::Args {
            min: 3,
            max: usize::MAX,
            layout: "the drop reason is its third argument since 5.17",
        },
    },
    Probe {
        program: "drop_kfree_skb_noreason",
        stage: Stage::Drop,
        hook: Hook::Tracepoint,
        targets: &["kfree_skb"],
        needs: Need::Args {
            min: 2,
            max: 2,
            layout: "before 5.17 it has no drop reason: drops are placed by location",
        },
    },
    Probe {
        program: "drop_icmp_send",
        stage: Stage::Drop,
        hook: Hook::Tracepoint,
        targets: &["icmp_send"],
        needs: Need::Nothing,
    },
    Probe {
        program: "socket_udp_fail_queue",
        stage: Stage::Socket,
        hook: Hook::Tracepoint,
        targets: &["udp_fail_queue_rcv_skb"],
        needs: Need::Args {
            min: 3,
            max: usize::MAX,
            layout: "the packet is its third argument since 6.4; before, it has none",
        },
    },
    Probe {
        program: "socket_rcvqueue_full",
        stage: Stage::Socket,
        hook: Hook::Tracepoint,
        targets: &["sock_rcvqueue_full"],
        needs: Need::Nothing,
    },
];
