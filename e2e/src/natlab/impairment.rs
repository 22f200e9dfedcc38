//! Link impairments: added delay and jitter with `tc qdisc … netem` on the egress of veth
//! interfaces, and random loss with nftables `numgen random` rules in the WAN router.
//!
//! Loss is done in nftables rather than netem so that it works on kernels built without
//! `CONFIG_NET_SCH_NETEM` (some VM kernels, including the one this was written on). Delay there
//! comes from a userspace delay line in the WAN router (`qp-delay-line` behind an iptables
//! `NFQUEUE` rule, which needs `iptables` and the binary built); without either, a lab asking for
//! delay fails with [`LabError::Unavailable`]
//! (see [`Lab::delay_available`](super::Lab::delay_available)).
//!
//! [`LabError::Unavailable`]: super::LabError::Unavailable

use std::fmt::Write as _;
use std::time::Duration;

/// Loss rules compare `numgen random mod LOSS_SCALE` against the loss share.
const LOSS_SCALE: u64 = 1_000_000;

/// Delay, jitter and loss added to packets crossing one side of a link.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Added one-way delay (needs netem).
    pub delay: Duration,
    /// Random variation of the delay (netem's jitter; it can reorder packets).
    pub jitter: Duration,
    /// Share of packets dropped, in percent (0.0 to 100.0).
    pub loss_percent: f64,
}

impl Impairment {
    /// No impairment.
    pub const NONE: Impairment = Impairment {
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        loss_percent: 0.0,
    };

    /// Only a fixed one-way delay.
    pub fn delay(delay: Duration) -> Self {
        Impairment {
            delay,
            ..Self::NONE
        }
    }

    /// Only random loss, in percent.
    pub fn loss(loss_percent: f64) -> Self {
        Impairment {
            loss_percent,
            ..Self::NONE
        }
    }

    /// This impairment with `jitter` added to its delay.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// This impairment with `loss_percent` random loss.
    pub fn with_loss(mut self, loss_percent: f64) -> Self {
        self.loss_percent = loss_percent;
        self
    }

    /// Whether this adds nothing.
    pub fn is_none(&self) -> bool {
        !self.has_delay() && self.loss_percent <= 0.0
    }

    /// Whether this adds delay or jitter (the part that needs netem).
    pub fn has_delay(&self) -> bool {
        !self.delay.is_zero() || !self.jitter.is_zero()
    }

    /// Both impairments in series: delays and jitters add up, losses compound.
    pub fn then(self, other: Impairment) -> Impairment {
        let keep = (1.0 - self.loss_percent / 100.0) * (1.0 - other.loss_percent / 100.0);
        Impairment {
            delay: self.delay + other.delay,
            jitter: self.jitter + other.jitter,
            loss_percent: (1.0 - keep) * 100.0,
        }
    }

    /// The `netem` arguments for `tc qdisc replace dev IF root netem …`: the delay part only.
    pub(crate) fn netem_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.has_delay() {
            args.push("delay".to_owned());
            args.push(format!("{}us", self.delay.as_micros()));
            if !self.jitter.is_zero() {
                args.push(format!("{}us", self.jitter.as_micros()));
            }
        }
        args
    }
}

/// The WAN router's loss chain: `wan` on every forwarded packet, `links[i]` on packets to and from
/// access link `n<i>`. A script for `nft -f -` that replaces the chain's rules atomically.
pub(crate) fn loss_ruleset(wan: f64, links: &[f64]) -> String {
    let mut rules = String::new();
    for (index, loss) in links.iter().enumerate() {
        for direction in ["iifname", "oifname"] {
            push_loss_rule(&mut rules, &format!("{direction} \"n{index}\" "), *loss);
        }
    }
    push_loss_rule(&mut rules, "", wan);
    format!(
        "table ip qpwan {{\n  chain loss {{\n    type filter hook forward priority filter; \
         policy accept;\n  }}\n}}\nflush chain ip qpwan loss\ntable ip qpwan {{\n  chain loss \
         {{\n{rules}  }}\n}}\n"
    )
}

fn push_loss_rule(rules: &mut String, selector: &str, loss_percent: f64) {
    let threshold = (loss_percent / 100.0 * LOSS_SCALE as f64).round() as u64;
    if threshold == 0 {
        return;
    }
    if threshold >= LOSS_SCALE {
        let _ = writeln!(rules, "    {selector}drop");
    } else {
        let _ = writeln!(
            rules,
            "    {selector}numgen random mod {LOSS_SCALE} < {threshold} drop"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netem_arguments_carry_the_delay_only() {
        assert!(Impairment::NONE.netem_args().is_empty());
        assert!(Impairment::NONE.is_none());
        assert!(Impairment::loss(5.0).netem_args().is_empty());
        assert!(!Impairment::loss(5.0).is_none());
        assert_eq!(
            Impairment::delay(Duration::from_millis(25)).netem_args(),
            ["delay", "25000us"]
        );
        assert_eq!(
            Impairment::delay(Duration::from_millis(25))
                .with_jitter(Duration::from_millis(5))
                .with_loss(1.5)
                .netem_args(),
            ["delay", "25000us", "5000us"]
        );
    }

    #[test]
    fn impairments_in_series_add_up() {
        let a = Impairment::delay(Duration::from_millis(10)).with_loss(10.0);
        let b = Impairment::delay(Duration::from_millis(5)).with_loss(10.0);
        let both = a.then(b);
        assert_eq!(both.delay, Duration::from_millis(15));
        assert!((both.loss_percent - 19.0).abs() < 1e-9);
        assert_eq!(Impairment::NONE.then(Impairment::NONE), Impairment::NONE);
    }

    #[test]
    fn loss_rules() {
        let script = loss_ruleset(100.0, &[0.0, 1.5]);
        assert!(script.contains("flush chain ip qpwan loss"));
        assert!(!script.contains("\"n0\""));
        assert!(script.contains("    iifname \"n1\" numgen random mod 1000000 < 15000 drop\n"));
        assert!(script.contains("    oifname \"n1\" numgen random mod 1000000 < 15000 drop\n"));
        assert!(script.contains("\n    drop\n"));
        let empty = loss_ruleset(0.0, &[]);
        assert!(empty.ends_with("chain loss {\n  }\n}\n"), "{empty}");
    }
}
