//! The netfilter rule path of one packet (`trace --rules`), as a query record carries it.

/// The netfilter chains one packet went through and the step that decided its fate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RulePath {
    /// `table chain` for every chain in order, without repeats in a row.
    pub chains: Vec<String>,
    /// The step with the last final verdict (accept, drop, ...), if one was traced.
    pub decided: Option<RuleStep>,
    /// The chains of the deciding step's table from its hook's base chain to the deciding chain,
    /// through the jumps taken (`FORWARD`, `cali-FORWARD`, `cali-to-wl-dispatch`, `cali-tw-…`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub walk: Vec<String>,
}

/// One step of a rule path: which rule (or chain policy) gave which verdict.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleStep {
    /// The table (`filter`).
    pub table: String,
    /// The chain (`FORWARD`, or a custom chain such as `cali-tw-…`).
    pub chain: String,
    /// The verdict (`DROP`, `ACCEPT`, ...).
    pub verdict: String,
    /// The rule as its backend prints it; `None` for the chain's policy.
    pub rule: Option<String>,
    /// The rule's comment.
    pub comment: Option<String>,
    /// The rule's position in its chain, from 1; `None` for the policy, and for a rule no longer
    /// in the ruleset when it was read.
    #[serde(default)]
    pub number: Option<u64>,
}

impl From<&crate::ruletrace::PacketPath> for RulePath {
    fn from(p: &crate::ruletrace::PacketPath) -> Self {
        let mut chains: Vec<String> = p
            .steps
            .iter()
            .map(|s| format!("{} {}", s.table, s.chain))
            .collect();
        chains.dedup();
        Self {
            chains,
            decided: p.decided().map(|s| RuleStep {
                table: s.table.clone(),
                chain: s.chain.clone(),
                verdict: s.verdict.to_string().to_uppercase(),
                rule: s.rule.as_ref().map(|r| r.text.clone()),
                comment: s.rule.as_ref().and_then(|r| r.comment.clone()),
                number: s.rule.as_ref().and_then(|r| r.number),
            }),
            walk: p.hook_walk().into_iter().map(str::to_owned).collect(),
        }
    }
}

impl std::fmt::Display for RulePath {
    /// The deciding table's walk to the verdict: `filter FORWARD -> cali-FORWARD -> … ->
    /// cali-tw-x rule 3 DROP ("cali:…" comment)`, the rule's text when it has no comment,
    /// `filter FORWARD policy DROP` for a chain's policy.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(d) = &self.decided else {
            return write!(f, "{}: no final verdict traced", self.chains.join(" -> "));
        };
        let walk = if self.walk.is_empty() {
            d.chain.clone()
        } else {
            self.walk.join(" -> ")
        };
        write!(f, "{} {walk}", d.table)?;
        match (&d.rule, d.number) {
            (None, _) => write!(f, " policy {}", d.verdict)?,
            (Some(_), Some(n)) => write!(f, " rule {n} {}", d.verdict)?,
            (Some(_), None) => write!(f, " {} by a rule no longer in the ruleset", d.verdict)?,
        }
        match (&d.comment, &d.rule) {
            (Some(c), _) => write!(f, " ({c:?} comment)"),
            (None, Some(rule)) if !rule.is_empty() => write!(f, ": {rule}"),
            _ => Ok(()),
        }
    }
}
