//! The one definition of what a write does to a rule: a pure function of the stored rule (if
//! any), the write and the instant. Every backend stores what it returns; none decides it.

use crate::rules::{NewRule, Rule, RuleAction, Source, Target, TenantId, UnixMillis};
use crate::store::RuleWrite;

/// What a write does to the stored rule of its `(tenant, action, target)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    /// Nothing stored, nothing to store (removing a rule that is not there).
    Unchanged,
    /// A rule to create.
    Create(NewRule),
    /// The stored row rewritten: same id, new fields.
    Update(Rule),
    /// The stored row to delete (as it was).
    Remove(Rule),
}

/// The action and target a write is about: the key of the rule it merges into.
pub fn key_of(write: &RuleWrite) -> (RuleAction, Target) {
    match write {
        RuleWrite::Put { action, target, .. } | RuleWrite::Remove { action, target } => {
            (*action, *target)
        }
        RuleWrite::Report { target, .. } => (RuleAction::Block, *target),
    }
}

/// Merges `write` into `stored`, the rule of the write's key in `tenant`, expired or not, at
/// instant `at`.
///
/// - A stored rule that has expired but is not purged yet starts a new life, as if it had been
///   purged and made again: nothing of it is kept but its id.
/// - `Put` replaces the expiry (absent: permanent) and the source; name, description and
///   dataset are replaced when given and kept when not.
/// - `Report` moves the expiry to the later of the two (a permanent rule stays permanent),
///   merges the tags, counts the report and takes the report's dataset; a rule it creates has
///   source `report`.
/// - `Remove` deletes the stored rule, expired or not.
pub fn merge(stored: Option<&Rule>, write: &RuleWrite, tenant: TenantId, at: UnixMillis) -> Merged {
    let (action, target) = key_of(write);
    let active = stored.filter(|rule| rule.is_active_at(at));
    match write {
        RuleWrite::Remove { .. } => match stored {
            Some(rule) => Merged::Remove(rule.clone()),
            None => Merged::Unchanged,
        },
        RuleWrite::Put {
            expires_at,
            name,
            description,
            source,
            dataset,
            ..
        } => {
            let fresh = || NewRule {
                tenant,
                action,
                target,
                expires_at: *expires_at,
                name: name.clone(),
                description: description.clone(),
                source: *source,
                dataset: dataset.clone(),
                tags: Vec::new(),
                reports: 0,
                created_at: at,
                updated_at: at,
            };
            match (stored, active) {
                (_, Some(rule)) => Merged::Update(Rule {
                    expires_at: *expires_at,
                    name: name.clone().or_else(|| rule.name.clone()),
                    description: description.clone().or_else(|| rule.description.clone()),
                    dataset: dataset.clone().or_else(|| rule.dataset.clone()),
                    source: *source,
                    updated_at: at,
                    ..rule.clone()
                }),
                (Some(expired), None) => Merged::Update(fresh().with_id(expired.id)),
                (None, None) => Merged::Create(fresh()),
            }
        }
        RuleWrite::Report {
            dataset,
            tags,
            expires_at,
            ..
        } => {
            let fresh = || NewRule {
                tenant,
                action,
                target,
                expires_at: Some(*expires_at),
                name: None,
                description: None,
                source: Source::Report,
                dataset: Some(dataset.clone()),
                tags: tags.clone(),
                reports: 1,
                created_at: at,
                updated_at: at,
            };
            match (stored, active) {
                (_, Some(rule)) => {
                    let mut merged_tags = rule.tags.clone();
                    for tag in tags {
                        if !merged_tags.contains(tag) {
                            merged_tags.push(tag.clone());
                        }
                    }
                    Merged::Update(Rule {
                        expires_at: rule.expires_at.map(|old| old.max(*expires_at)),
                        dataset: Some(dataset.clone()),
                        tags: merged_tags,
                        reports: rule.reports.saturating_add(1),
                        updated_at: at,
                        ..rule.clone()
                    })
                }
                (Some(expired), None) => Merged::Update(fresh().with_id(expired.id)),
                (None, None) => Merged::Create(fresh()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const T: TenantId = TenantId(1);
    const AT: UnixMillis = UnixMillis(1_000_000);

    fn target() -> Target {
        Target::parse_any("192.0.2.0/24").unwrap()
    }

    fn stored(expires_at: Option<i64>) -> Rule {
        Rule {
            id: 7,
            tenant: T,
            action: RuleAction::Block,
            target: target(),
            expires_at: expires_at.map(UnixMillis),
            name: Some("old name".into()),
            description: Some("old description".into()),
            source: Source::Signal,
            dataset: Some("TOR".into()),
            tags: vec!["a".into()],
            reports: 2,
            created_at: UnixMillis(10),
            updated_at: UnixMillis(20),
        }
    }

    fn put(expires_at: Option<i64>, name: Option<&str>) -> RuleWrite {
        RuleWrite::Put {
            action: RuleAction::Block,
            target: target(),
            expires_at: expires_at.map(UnixMillis),
            name: name.map(Into::into),
            description: None,
            source: Source::Signal,
            dataset: None,
        }
    }

    fn report(expires_at: i64, tags: &[&str]) -> RuleWrite {
        RuleWrite::Report {
            target: target(),
            dataset: "ABUSE".into(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            expires_at: UnixMillis(expires_at),
        }
    }

    #[test]
    fn a_put_refreshes_an_active_rule_and_keeps_what_it_does_not_name() {
        let Merged::Update(rule) = merge(Some(&stored(Some(2_000_000))), &put(None, None), T, AT)
        else {
            panic!()
        };
        assert_eq!(rule.id, 7);
        assert_eq!(rule.expires_at, None);
        assert_eq!(rule.name.as_deref(), Some("old name"));
        assert_eq!(rule.description.as_deref(), Some("old description"));
        assert_eq!((rule.dataset.as_deref(), rule.reports), (Some("TOR"), 2));
        assert_eq!((rule.created_at, rule.updated_at), (UnixMillis(10), AT));
    }

    #[test]
    fn an_expired_rule_starts_a_new_life_under_its_id() {
        let expired = stored(Some(AT.0));
        let Merged::Update(rule) = merge(Some(&expired), &put(Some(5), Some("new")), T, AT) else {
            panic!()
        };
        assert_eq!(
            rule,
            Rule {
                id: 7,
                tenant: T,
                action: RuleAction::Block,
                target: target(),
                expires_at: Some(UnixMillis(5)),
                name: Some("new".into()),
                description: None,
                source: Source::Signal,
                dataset: None,
                tags: vec![],
                reports: 0,
                created_at: AT,
                updated_at: AT,
            }
        );
        let Merged::Update(reported) = merge(Some(&expired), &report(9, &["x"]), T, AT) else {
            panic!()
        };
        assert_eq!(
            (
                reported.name,
                reported.source,
                reported.reports,
                reported.tags
            ),
            (None, Source::Report, 1, vec!["x".to_owned()])
        );
    }

    #[test]
    fn reports_merge_into_active_rules() {
        let Merged::Update(rule) = merge(
            Some(&stored(Some(2_000_000))),
            &report(1_500_000, &["b", "a"]),
            T,
            AT,
        ) else {
            panic!()
        };
        assert_eq!(rule.expires_at, Some(UnixMillis(2_000_000)));
        assert_eq!(rule.tags, ["a", "b"]);
        assert_eq!((rule.reports, rule.source), (3, Source::Signal));
        assert_eq!(rule.dataset.as_deref(), Some("ABUSE"));
        let Merged::Update(permanent) = merge(Some(&stored(None)), &report(5, &[]), T, AT) else {
            panic!()
        };
        assert_eq!(permanent.expires_at, None);
    }

    #[test]
    fn removing_takes_the_stored_rule_expired_or_not() {
        let remove = RuleWrite::Remove {
            action: RuleAction::Block,
            target: target(),
        };
        assert_eq!(merge(None, &remove, T, AT), Merged::Unchanged);
        let expired = stored(Some(1));
        assert_eq!(
            merge(Some(&expired), &remove, T, AT),
            Merged::Remove(expired)
        );
    }

    fn any_stored() -> impl Strategy<Value = Option<Rule>> {
        proptest::option::of((
            proptest::option::of(0i64..3_000_000),
            proptest::collection::btree_set("[a-c]", 0..3),
            0u32..5,
        ))
        .prop_map(|stored_rule| {
            stored_rule.map(|(expires_at, tags, reports)| Rule {
                tags: tags.into_iter().collect(),
                reports,
                ..stored(expires_at)
            })
        })
    }

    proptest! {
        /// A report never shortens an active block, never drops a tag, and always counts.
        #[test]
        fn reports_only_ever_add(existing in any_stored(), expiry in 0i64..3_000_000,
                                 tags in proptest::collection::btree_set("[a-d]", 0..4)) {
            // Reports arrive with their tags deduplicated (see `reports`).
            let tags: Vec<String> = tags.into_iter().collect();
            let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
            let merged = merge(existing.as_ref(), &report(expiry, &tag_refs), T, AT);
            let rule = match merged {
                Merged::Update(rule) => rule,
                Merged::Create(new) => new.with_id(0),
                other => panic!("{other:?}"),
            };
            let active = existing.as_ref().filter(|r| r.is_active_at(AT));
            for tag in active.iter().flat_map(|r| r.tags.iter()).chain(tags.iter()) {
                prop_assert!(rule.tags.contains(tag));
            }
            let unique: std::collections::HashSet<&String> = rule.tags.iter().collect();
            prop_assert_eq!(unique.len(), rule.tags.len());
            match active {
                Some(old) => {
                    prop_assert_eq!(rule.reports, old.reports + 1);
                    match (old.expires_at, rule.expires_at) {
                        (None, new) => prop_assert_eq!(new, None),
                        (Some(old_at), Some(new_at)) => prop_assert!(new_at >= old_at && new_at.0 >= expiry),
                        (Some(_), None) => prop_assert!(false),
                    }
                }
                None => {
                    prop_assert_eq!(rule.reports, 1);
                    prop_assert_eq!(rule.expires_at, Some(UnixMillis(expiry)));
                }
            }
        }

        /// A put always ends with exactly the expiry it asked for, under the stored id if any.
        #[test]
        fn puts_set_the_expiry(existing in any_stored(), expiry in proptest::option::of(0i64..3_000_000)) {
            let merged = merge(existing.as_ref(), &put(expiry, None), T, AT);
            match (existing, merged) {
                (Some(old), Merged::Update(rule)) => {
                    prop_assert_eq!(rule.id, old.id);
                    prop_assert_eq!(rule.expires_at, expiry.map(UnixMillis));
                }
                (None, Merged::Create(new)) => prop_assert_eq!(new.expires_at, expiry.map(UnixMillis)),
                (old, merged) => prop_assert!(false, "{old:?} -> {merged:?}"),
            }
        }
    }
}
