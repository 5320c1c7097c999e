//! Class groups: generating by coarse class (an emoji category) with a generator trained on finer ones
//! (its subcategories).
//!
//! A generator conditioned on fine classes draws more coherent images than one conditioned on broad
//! ones, but users (and the evaluation classifier) think in the broad classes. A groups file lists, for
//! each output class, the generator classes that make it up; `nvg generate` then names and scores its
//! images by group and conditions each one on a member class chosen from (seed, group, index).
//!
//! The file is JSON, e.g. a model's `classes.json`:
//! `{"classes": [fine class names...], "groups": [{"name": "0-smileys-emotion", "classes": [0, 1, ...]}, ...]}`
//! (only `groups` is read).

use anyhow::{Context, Result, bail, ensure};
use std::path::Path;

/// The output classes of a grouped job and the generator classes of each.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassGroups {
    names: Vec<String>,
    members: Vec<Vec<usize>>,
}

impl ClassGroups {
    /// Groups of a `num_classes`-class generator: every group has at least one member, every member is a
    /// class of the generator, and no class is in two groups.
    pub fn new(names: Vec<String>, members: Vec<Vec<usize>>, num_classes: usize) -> Result<ClassGroups> {
        ensure!(!members.is_empty(), "no group given");
        ensure!(
            names.len() == members.len(),
            "{} names for {} groups",
            names.len(),
            members.len()
        );
        let mut owner = vec![None; num_classes];
        for (g, m) in members.iter().enumerate() {
            ensure!(!m.is_empty(), "group {g} ({}) has no class", names[g]);
            for &c in m {
                ensure!(
                    c < num_classes,
                    "group {g} ({}) names class {c}, but the generator has classes 0..{}",
                    names[g],
                    num_classes - 1
                );
                if let Some(other) = owner[c].replace(g) {
                    bail!("class {c} is in groups {other} and {g}");
                }
            }
        }
        Ok(ClassGroups { names, members })
    }

    /// The groups of the JSON file `path` (its `groups` list) for a `num_classes`-class generator.
    pub fn load(path: &Path, num_classes: usize) -> Result<ClassGroups> {
        let at = || format!("class groups {}", path.display());
        let text = std::fs::read_to_string(path).with_context(at)?;
        let json: serde_json::Value = serde_json::from_str(&text).with_context(at)?;
        let groups = json
            .get("groups")
            .and_then(|g| g.as_array())
            .with_context(|| format!("{}: no \"groups\" list", at()))?;
        let mut names = Vec::new();
        let mut members = Vec::new();
        for (g, entry) in groups.iter().enumerate() {
            let name = entry
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_string();
            let ids = entry
                .get("classes")
                .and_then(|c| c.as_array())
                .with_context(|| format!("{}: group {g} has no \"classes\" list", at()))?;
            let ids = ids
                .iter()
                .map(|v| v.as_u64().map(|c| c as usize))
                .collect::<Option<Vec<usize>>>()
                .with_context(|| format!("{}: group {g}'s classes are not all class ids", at()))?;
            names.push(name);
            members.push(ids);
        }
        Self::new(names, members, num_classes).with_context(at)
    }

    /// Whether `path` is a JSON file with a `groups` list (a model's classes.json may or may not have one).
    pub fn present_in(path: &Path) -> bool {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|j| j.get("groups").is_some())
    }

    /// Number of groups (the job's classes).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a `ClassGroups` has at least one group.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Name of group `g`.
    pub fn name(&self, g: usize) -> &str {
        &self.names[g]
    }

    /// Generator classes of group `g`.
    pub fn members(&self, g: usize) -> &[usize] {
        &self.members[g]
    }

    /// The generator class image `index` of group `group` is conditioned on under `seed`: the members in
    /// turn from a start drawn from (seed, group), so consecutive indices cover the group's classes before
    /// any repeats, and each seed starts elsewhere.
    pub fn class_for(&self, seed: u64, group: usize, index: usize) -> usize {
        let m = &self.members[group];
        let mut h = nvg_engine::io::Hasher64::new();
        h.update(b"class-group");
        h.update(&seed.to_le_bytes());
        h.update(&(group as u64).to_le_bytes());
        let start = (h.finish() % m.len() as u64) as usize;
        m[(start + index % m.len()) % m.len()]
    }

    /// A fingerprint of the groups, for the job record.
    pub fn fingerprint(&self) -> u64 {
        let mut h = nvg_engine::io::Hasher64::new();
        for (name, m) in self.names.iter().zip(&self.members) {
            h.update(name.as_bytes());
            h.update(&[0xff]);
            for &c in m {
                h.update(&(c as u64).to_le_bytes());
            }
            h.update(&[0xfe]);
        }
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> ClassGroups {
        ClassGroups::new(vec!["a".into(), "b".into()], vec![vec![0, 1, 2], vec![4, 3]], 5).unwrap()
    }

    #[test]
    fn consecutive_indices_cover_a_group_before_repeating_and_stay_in_it() {
        let g = groups();
        for seed in 0..20 {
            for group in 0..2 {
                let m = g.members(group);
                let drawn: Vec<usize> = (0..2 * m.len()).map(|i| g.class_for(seed, group, i)).collect();
                let mut first: Vec<usize> = drawn[..m.len()].to_vec();
                first.sort();
                let mut want = m.to_vec();
                want.sort();
                assert_eq!(first, want, "seed {seed} group {group}: {drawn:?}");
                assert_eq!(
                    drawn[..m.len()],
                    drawn[m.len()..],
                    "the cycle repeats in the same order"
                );
            }
        }
        let starts: std::collections::HashSet<usize> = (0..20).map(|s| g.class_for(s, 0, 0)).collect();
        assert!(starts.len() > 1, "the start does not depend on the seed");
    }

    #[test]
    fn bad_groups_are_refused_with_the_reason() {
        let e = |n: Vec<Vec<usize>>| {
            let names = (0..n.len()).map(|i| format!("g{i}")).collect();
            format!("{:#}", ClassGroups::new(names, n, 4).unwrap_err())
        };
        assert!(e(vec![vec![0], vec![]]).contains("group 1 (g1) has no class"));
        assert!(e(vec![vec![0, 4]]).contains("names class 4, but the generator has classes 0..3"));
        assert!(e(vec![vec![0, 1], vec![1]]).contains("class 1 is in groups 0 and 1"));
        assert!(e(vec![]).contains("no group"));
    }

    #[test]
    fn groups_load_from_a_classes_file_and_missing_lists_are_named() {
        let dir = std::env::temp_dir().join(format!("nvg-class-groups-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = dir.join("classes.json");
        std::fs::write(
            &ok,
            r#"{"classes": ["x","y","z","w","v"], "groups": [{"name": "a", "classes": [0,1,2]}, {"name": "b", "classes": [4,3]}]}"#,
        )
        .unwrap();
        assert!(ClassGroups::present_in(&ok));
        assert_eq!(ClassGroups::load(&ok, 5).unwrap(), groups());
        assert_ne!(
            groups().fingerprint(),
            ClassGroups::new(vec!["a".into()], vec![vec![0]], 5)
                .unwrap()
                .fingerprint()
        );
        let flat = dir.join("flat.json");
        std::fs::write(&flat, r#"{"classes": ["x"]}"#).unwrap();
        assert!(!ClassGroups::present_in(&flat));
        let err = format!("{:#}", ClassGroups::load(&flat, 5).unwrap_err());
        assert!(err.contains("flat.json") && err.contains("no \"groups\" list"), "{err}");
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"groups": [{"name": "a", "classes": [0, "one"]}]}"#).unwrap();
        let err = format!("{:#}", ClassGroups::load(&bad, 5).unwrap_err());
        assert!(err.contains("group 0's classes are not all class ids"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
