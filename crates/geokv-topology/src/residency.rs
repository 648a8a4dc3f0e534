//! Residency policies: which regions may hold a key.
//!
//! A policy file holds ordered rules that match keys by prefix; the rule with the longest
//! matching prefix decides, and a default rule (`prefix = ""`) is required so every key has
//! one. A rule allows regions by an explicit list, by jurisdiction tag, by a geographic fence
//! over the regions' locations, or everywhere, and says what a region that may not hold the
//! key does with a client's request for it: `forward` it to the nearest allowed region, or
//! `reject` it.
//!
//! ```toml
//! min_regions = 1                 # optional: refuse rules allowing fewer regions than this
//!
//! [[rules]]
//! name = "default"
//! prefix = ""
//! everywhere = true
//!
//! [[rules]]
//! name = "eu-users"
//! prefix = "eu:user:"
//! jurisdictions = ["eu"]
//! on_foreign = "forward"          # or "reject" (the default)
//! ```
//!
//! This module only evaluates; enforcing happens where data lands (the server's storage
//! admission, the replicator, anti-entropy, the client API).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fence::{fence_contains, fence_polygon};
use crate::Topology;

/// What a region that may not hold a key does with a client's request for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnForeign {
    /// Serve it transparently through the nearest allowed region.
    Forward,
    /// Refuse it with `FAILED_PRECONDITION`.
    #[default]
    Reject,
}

impl OnForeign {
    pub fn as_str(self) -> &'static str {
        match self {
            OnForeign::Forward => "forward",
            OnForeign::Reject => "reject",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    min_regions: Option<usize>,
    #[serde(default)]
    rules: Vec<toml::Spanned<RuleSpec>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: Option<String>,
    prefix: String,
    regions: Option<Vec<String>>,
    jurisdictions: Option<Vec<String>>,
    fence: Option<Vec<[f64; 2]>>,
    #[serde(default)]
    everywhere: bool,
    #[serde(default)]
    on_foreign: OnForeign,
    min_regions: Option<usize>,
}

/// How a rule chooses its regions (kept for `explain`).
#[derive(Clone, Debug, PartialEq)]
pub enum Allow {
    Everywhere,
    Regions(Vec<String>),
    Jurisdictions(Vec<String>),
    Fence(Vec<[f64; 2]>),
}

impl std::fmt::Display for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allow::Everywhere => write!(f, "everywhere"),
            Allow::Regions(r) => write!(f, "regions {}", r.join(", ")),
            Allow::Jurisdictions(j) => write!(f, "jurisdictions {}", j.join(", ")),
            Allow::Fence(v) => write!(f, "a fence of {} vertices", v.len()),
        }
    }
}

/// One validated rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    pub prefix: Vec<u8>,
    pub allow: Allow,
    /// The regions of the topology the rule allows.
    pub allowed: BTreeSet<String>,
    pub on_foreign: OnForeign,
    /// Line of the rule in its file (0 for built-in rules).
    pub line: usize,
}

impl Rule {
    pub fn allows(&self, region: &str) -> bool {
        self.allowed.contains(region)
    }
}

/// A validated policy over one topology's regions.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Longest prefix first, so the first match is the deciding rule.
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read residency policy {path}: {message}")]
    Read { path: String, message: String },
    #[error("residency policy {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("residency policy {path}{}: {problem}; {fix}", location(*line, rule))]
    Invalid { path: String, line: usize, rule: String, problem: String, fix: String },
}

fn location(line: usize, rule: &str) -> String {
    match (line, rule.is_empty()) {
        (0, true) => String::new(),
        (0, false) => format!(", rule {rule:?}"),
        (l, true) => format!(", line {l}"),
        (l, false) => format!(", line {l}, rule {rule:?}"),
    }
}

impl Policy {
    /// The policy of a deployment without a policy file: every key may live everywhere.
    pub fn permissive(topology: &Topology) -> Policy {
        Policy {
            rules: vec![Rule {
                name: "default".into(),
                prefix: Vec::new(),
                allow: Allow::Everywhere,
                allowed: topology.regions.iter().map(|r| r.name.clone()).collect(),
                on_foreign: OnForeign::Reject,
                line: 0,
            }],
        }
    }

    pub fn load(path: &Path, topology: &Topology) -> Result<Policy, PolicyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::Read { path: shown.clone(), message: e.to_string() })?;
        Self::parse(&text, &shown, topology)
    }

    /// Parses and validates policy text against `topology`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str, topology: &Topology) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text)
            .map_err(|e| PolicyError::Parse { path: origin.into(), message: e.to_string() })?;
        let invalid = |line: usize, rule: &str, problem: String, fix: &str| PolicyError::Invalid {
            path: origin.into(),
            line,
            rule: rule.into(),
            problem,
            fix: fix.into(),
        };
        let min_default = file.min_regions.unwrap_or(1);
        if min_default == 0 {
            return Err(invalid(0, "", "min_regions is 0".into(), "use at least 1"));
        }
        let mut rules: Vec<Rule> = Vec::new();
        let mut seen_prefix: BTreeMap<String, usize> = BTreeMap::new();
        let mut seen_name: BTreeMap<String, usize> = BTreeMap::new();
        for spanned in &file.rules {
            let line = text[..spanned.span().start.min(text.len())].matches('\n').count() + 1;
            let spec = spanned.get_ref();
            let name = spec.name.clone().unwrap_or_else(|| format!("prefix {:?}", spec.prefix));
            if let Some(first) = seen_prefix.insert(spec.prefix.clone(), line) {
                return Err(invalid(
                    line,
                    &name,
                    format!("prefix {:?} is also the prefix of the rule at line {first}", spec.prefix),
                    "keep one rule per prefix (merge the two)",
                ));
            }
            if let Some(first) = seen_name.insert(name.clone(), line) {
                return Err(invalid(
                    line,
                    &name,
                    format!("the name is also used by the rule at line {first}"),
                    "give every rule its own name",
                ));
            }
            let rule = build_rule(spec, name, line, topology)
                .map_err(|(p, f)| invalid(line, &spec_name(spec), p, &f))?;
            let min = spec.min_regions.unwrap_or(min_default);
            if min == 0 {
                return Err(invalid(line, &rule.name, "min_regions is 0".into(), "use at least 1"));
            }
            if rule.allowed.len() < min {
                return Err(invalid(
                    line,
                    &rule.name,
                    format!(
                        "it allows {} region(s) ({}) but at least {min} are required (min_regions)",
                        rule.allowed.len(),
                        join(&rule.allowed)
                    ),
                    "allow more regions, or lower min_regions if so few copies are really meant",
                ));
            }
            rules.push(rule);
        }
        if !rules.iter().any(|r| r.prefix.is_empty()) {
            return Err(invalid(
                0,
                "",
                "there is no default rule".into(),
                "add a [[rules]] entry with prefix = \"\" (it decides for every key no other rule matches)",
            ));
        }
        rules.sort_by(|a, b| b.prefix.len().cmp(&a.prefix.len()).then_with(|| a.prefix.cmp(&b.prefix)));
        Ok(Policy { rules })
    }

    /// The rule that decides for `key`: the one with the longest prefix of it.
    pub fn rule_for(&self, key: &[u8]) -> &Rule {
        self.rules.iter().find(|r| key.starts_with(&r.prefix)).expect("a validated policy has a default rule")
    }

    /// Whether `region` may hold `key`.
    pub fn allows(&self, key: &[u8], region: &str) -> bool {
        self.rule_for(key).allows(region)
    }

    /// The rules, longest prefix first.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The regions allowed by `rule`, nearest to region `from` first (great-circle distance
    /// between the regions' locations; ties by name): where a forwarded request goes.
    pub fn forward_order(rule: &Rule, from: &str, topology: &Topology) -> Vec<String> {
        let mut regions: Vec<(f64, &String)> =
            rule.allowed.iter().map(|r| (topology.distance_km(from, r).unwrap_or(f64::MAX), r)).collect();
        regions.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        regions.into_iter().map(|(_, r)| r.clone()).collect()
    }
}

fn spec_name(spec: &RuleSpec) -> String {
    spec.name.clone().unwrap_or_else(|| format!("prefix {:?}", spec.prefix))
}

fn join<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let v: Vec<&str> = items.into_iter().map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Resolves a rule's selector against the topology; errors are (problem, fix).
fn build_rule(
    spec: &RuleSpec,
    name: String,
    line: usize,
    topology: &Topology,
) -> Result<Rule, (String, String)> {
    let selectors =
        [spec.regions.is_some(), spec.jurisdictions.is_some(), spec.fence.is_some(), spec.everywhere]
            .iter()
            .filter(|&&s| s)
            .count();
    if selectors != 1 {
        return Err((
            format!("it sets {selectors} of regions, jurisdictions, fence and everywhere"),
            "set exactly one of them".into(),
        ));
    }
    let known_regions: Vec<&String> = topology.regions.iter().map(|r| &r.name).collect();
    let (allow, allowed): (Allow, BTreeSet<String>) = if spec.everywhere {
        (Allow::Everywhere, known_regions.iter().map(|r| r.to_string()).collect())
    } else if let Some(list) = &spec.regions {
        for r in list {
            if topology.region(r).is_none() {
                return Err((
                    format!("unknown region {r:?}"),
                    format!("use regions of the topology: {}", join(known_regions.iter().copied())),
                ));
            }
        }
        (Allow::Regions(list.clone()), list.iter().cloned().collect())
    } else if let Some(list) = &spec.jurisdictions {
        let known: BTreeSet<String> = topology.regions.iter().map(|r| r.jurisdiction.clone()).collect();
        for j in list {
            if !known.contains(j) {
                return Err((
                    format!("unknown jurisdiction {j:?} (no region is tagged with it)"),
                    format!("use jurisdictions of the topology: {}", join(&known)),
                ));
            }
        }
        let allowed = topology
            .regions
            .iter()
            .filter(|r| list.contains(&r.jurisdiction))
            .map(|r| r.name.clone())
            .collect();
        (Allow::Jurisdictions(list.clone()), allowed)
    } else {
        let vertices = spec.fence.clone().unwrap_or_default();
        let polygon = fence_polygon(&vertices).map_err(|e| {
            (
                e.to_string(),
                "give the fence as [[longitude, latitude], ...] around the area, in order".to_string(),
            )
        })?;
        let allowed: BTreeSet<String> = topology
            .regions
            .iter()
            .filter(|r| fence_contains(&polygon, r.point()))
            .map(|r| r.name.clone())
            .collect();
        if allowed.is_empty() {
            let places: Vec<String> = topology
                .regions
                .iter()
                .map(|r| format!("{} at [{}, {}]", r.name, r.location[0], r.location[1]))
                .collect();
            return Err((
                format!("the fence contains no region ({})", places.join("; ")),
                "draw the fence around the locations of the regions that may hold these keys".into(),
            ));
        }
        (Allow::Fence(vertices), allowed)
    };
    if allowed.is_empty() {
        return Err(("it allows no region".into(), "name at least one region or jurisdiction".into()));
    }
    Ok(Rule {
        name,
        prefix: spec.prefix.as_bytes().to_vec(),
        allow,
        allowed,
        on_foreign: spec.on_foreign,
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE_REGIONS: &str = include_str!("../../../topology/three-regions.toml");
    const EXAMPLE: &str = include_str!("../../../topology/residency.toml");

    fn topology() -> Topology {
        Topology::parse(THREE_REGIONS, "three-regions.toml").unwrap()
    }

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(text, "residency.toml", &topology())
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const DEFAULT: &str = "[[rules]]\nname = \"default\"\nprefix = \"\"\neverywhere = true\n";

    #[test]
    fn the_example_policy_is_valid_and_longest_prefix_wins() {
        let p = parse(EXAMPLE).unwrap();
        assert_eq!(p.rule_for(b"eu:user:42").name, "eu-users");
        assert!(p.allows(b"eu:user:42", "eu-west"));
        assert!(!p.allows(b"eu:user:42", "us-east"));
        assert!(!p.allows(b"eu:user:42", "ap-south"));
        assert_eq!(p.rule_for(b"eu:user:42").on_foreign, OnForeign::Forward);
        assert!(p.allows(b"anything", "ap-south"));
        assert_eq!(p.rule_for(b"").name, "default");
    }

    #[test]
    fn rules_select_regions_by_list_jurisdiction_and_fence() {
        let text = format!(
            "{DEFAULT}\n[[rules]]\nprefix = \"a:\"\nregions = [\"us-east\", \"ap-south\"]\n\
             [[rules]]\nprefix = \"a:b:\"\njurisdictions = [\"us\"]\non_foreign = \"forward\"\n\
             [[rules]]\nprefix = \"f:\"\nfence = [[-25.0, 34.0], [45.0, 34.0], [45.0, 72.0], [-25.0, 72.0]]\n"
        );
        let p = parse(&text).unwrap();
        let allowed = |k: &[u8]| p.rule_for(k).allowed.iter().cloned().collect::<Vec<_>>();
        assert_eq!(allowed(b"a:x"), ["ap-south", "us-east"]);
        assert_eq!(allowed(b"a:b:x"), ["us-east"]);
        assert_eq!(allowed(b"f:x"), ["eu-west"]);
        assert_eq!(allowed(b"zzz").len(), 3);
        assert_eq!(p.rule_for(b"a:b:x").on_foreign, OnForeign::Forward);
        assert_eq!(p.rule_for(b"a:x").on_foreign, OnForeign::Reject, "reject is the default");
    }

    #[test]
    fn forwarding_goes_to_the_nearest_allowed_region() {
        let t = topology();
        let p =
            parse(&format!("{DEFAULT}\n[[rules]]\nprefix = \"x\"\nregions = [\"eu-west\", \"ap-south\"]\n"))
                .unwrap();
        let rule = p.rule_for(b"x1");
        assert_eq!(Policy::forward_order(rule, "us-east", &t), ["eu-west", "ap-south"]);
    }

    #[test]
    fn validation_errors_name_the_file_line_rule_and_fix() {
        let e = err("[[rules]]\nprefix = \"a\"\neverywhere = true\n");
        assert!(
            e.contains("residency.toml") && e.contains("no default rule") && e.contains("prefix = \"\""),
            "{e}"
        );
        let e =
            err(&format!("{DEFAULT}\n[[rules]]\nname = \"eu\"\nprefix = \"eu:\"\nregions = [\"mars\"]\n"));
        assert!(
            e.contains("line 6") && e.contains("rule \"eu\"") && e.contains("unknown region \"mars\""),
            "{e}"
        );
        assert!(e.contains("eu-west"), "the fix lists the known regions: {e}");
        let e = err(&format!("{DEFAULT}\n[[rules]]\nprefix = \"eu:\"\njurisdictions = [\"fr\"]\n"));
        assert!(e.contains("unknown jurisdiction \"fr\"") && e.contains("eu, sg, us"), "{e}");
        let e = err(&format!("{DEFAULT}\n[[rules]]\nprefix = \"eu:\"\nregions = []\n"));
        assert!(e.contains("allows no region"), "{e}");
        let e = err(&format!("{DEFAULT}\n[[rules]]\nprefix = \"\"\neverywhere = true\nname = \"again\"\n"));
        assert!(e.contains("also the prefix of the rule at line 1"), "{e}");
        let e = err(&format!(
            "{DEFAULT}\n[[rules]]\nprefix = \"eu:\"\nregions = [\"eu-west\"]\neverywhere = true\n"
        ));
        assert!(e.contains("set exactly one"), "{e}");
        let e = err(&format!("{DEFAULT}\n[[rules]]\nprefix = \"f:\"\nfence = [[0.0, 0.0], [2.0, 2.0], [2.0, 0.0], [0.0, 2.0]]\n"));
        assert!(e.contains("crosses itself"), "{e}");
        let e = err(&format!(
            "{DEFAULT}\n[[rules]]\nprefix = \"f:\"\nfence = [[0.0, 0.0], [2.0, 0.0], [2.0, 2.0]]\n"
        ));
        assert!(e.contains("contains no region") && e.contains("eu-west at [-6.2603, 53.3498]"), "{e}");
        let e = err(&format!(
            "min_regions = 2\n{DEFAULT}\n[[rules]]\nprefix = \"eu:\"\njurisdictions = [\"eu\"]\n"
        ));
        assert!(e.contains("at least 2 are required"), "{e}");
        let e = err(&format!(
            "{DEFAULT}\n[[rules]]\nprefix = \"eu:\"\nregions = [\"eu-west\"]\non_foreign = \"drop\"\n"
        ));
        assert!(e.contains("residency.toml") && e.contains("line"), "toml errors carry the line: {e}");
        let e = err("rules = 3");
        assert!(e.contains("residency.toml"), "{e}");
    }

    #[test]
    fn a_rule_may_lower_the_minimum_for_itself() {
        let text = format!("min_regions = 2\n{DEFAULT}\n[[rules]]\nprefix = \"eu:\"\njurisdictions = [\"eu\"]\nmin_regions = 1\n");
        assert!(parse(&text).is_ok());
    }
}
