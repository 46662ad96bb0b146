//! `tracer lab`.

use crate::{
    cli::{LabAction, LabArgs, PodAction},
    lab::{self, FaultName, LabInfo},
};

/// Runs `tracer lab ...`.
pub fn run(args: LabArgs) -> Result<(), lab::Error> {
    let prefix = args.prefix.as_str();
    match args.action {
        LabAction::Up {
            backend,
            proxy_mode,
            clients,
            ip_family,
            nodelocal,
        } => {
            let shape = lab::Shape {
                backend,
                clients,
                proxy_mode,
                ip_family,
                nodelocal,
            };
            let lab = lab::up_with(prefix, &shape)?;
            print_status(&lab);
        }
        LabAction::Down => {
            lab::down(prefix)?;
            println!("lab {prefix}: down");
        }
        LabAction::Status => match lab::info(prefix)? {
            Some(lab) => print_status(&lab),
            None => println!("lab {prefix}: down"),
        },
        LabAction::Pod(PodAction::Add { name }) => {
            let pod = lab::add_pod(prefix, &name)?;
            println!(
                "lab {prefix}: pod {} added, {} in netns {}, node side {}",
                pod.name, pod.ip, pod.netns, pod.host_ifname
            );
        }
        LabAction::Pod(PodAction::Del { name }) => {
            lab::del_pod(prefix, &name)?;
            println!("lab {prefix}: pod {name} deleted");
        }
        LabAction::Fault(f) if f.name == FaultName::Clear => {
            if f.pod.is_some() {
                return Err(lab::Error::PodNotAllowed {
                    fault: f.name.to_string(),
                });
            }
            lab::clear(prefix)?;
            println!("lab {prefix}: every fault cleared");
        }
        LabAction::Fault(f) => {
            lab::fault(prefix, f.name, f.pod)?;
            let lab = lab::info(prefix)?.ok_or_else(|| lab::Error::NotUp {
                prefix: prefix.to_owned(),
            })?;
            println!("lab {prefix}: fault {} applied", f.name);
            if let Some(port) = lab.stale_source_port
                && f.name == FaultName::StaleConntrack
            {
                println!(
                    "  client0 source port {port} still maps to the removed endpoint (tracer probe --lab uses it)"
                );
            }
            if f.name == FaultName::ConntrackRace {
                println!(
                    "  tracer probe --lab now sends A and AAAA in parallel from one socket; conntrack's clash_resolve counts the races"
                );
            }
        }
    }
    Ok(())
}

fn print_status(lab: &LabInfo) {
    match lab.proxy_mode {
        lab::ProxyMode::Iptables => println!(
            "lab {}: up, kube-proxy rules in iptables-{}, node namespace {}",
            lab.prefix, lab.backend, lab.node_netns
        ),
        lab::ProxyMode::Ipvs => println!(
            "lab {}: up, kube-proxy in ipvs mode (kube-ipvs0, IPVS services, rules in iptables-{}), node namespace {}",
            lab.prefix, lab.backend, lab.node_netns
        ),
        lab::ProxyMode::Nftables => println!(
            "lab {}: up, kube-proxy in nftables mode (table ip kube-proxy), node namespace {}",
            lab.prefix, lab.node_netns
        ),
    }
    for ip in lab.service_ips() {
        println!(
            "  service kube-system/kube-dns  {} (udp, tcp)",
            std::net::SocketAddr::new(ip, lab.dns_port)
        );
    }
    if let Some(cache) = &lab.nodelocal {
        let ips: Vec<String> = cache
            .local_ips
            .iter()
            .map(|ip| format!("{ip}:53"))
            .collect();
        let pid = cache
            .pid
            .map_or("not running".to_owned(), |p| format!("pid {p}"));
        println!(
            "  nodelocal dns cache on {} (link {}, udp/tcp), {pid}, misses to service kube-system/kube-dns-upstream {}:53, log {}",
            ips.join(" "),
            cache.link,
            cache.upstream_ip,
            cache.log.display()
        );
    }
    for pod in lab.endpoints.iter().chain(&lab.clients).chain(&lab.pods) {
        println!(
            "  {:<8} {:<15} netns {:<14} node side {}",
            pod.name, pod.ip, pod.netns, pod.host_ifname
        );
    }
    if lab.faults.is_empty() {
        println!("  faults: none");
    } else {
        let names: Vec<String> = lab.faults.iter().map(|f| f.to_string()).collect();
        println!("  faults: {}", names.join(", "));
    }
    if let Some(port) = lab.stale_source_port {
        println!("  stale flow: client0 source port {port}");
    }
}
