//! The IAM policy evaluator: `Effect`, `Action`/`NotAction`,
//! `Resource`/`NotResource`, `Principal`/`NotPrincipal` and the `String*` /
//! `Arn*` condition operators (with `IfExists`) over the condition keys the
//! plane knows, for identity, bucket and trust policies.

use std::collections::HashMap;

use serde_json::Value;

use super::ids::role_name;

/// Condition keys and their values, keys lower-cased.
pub(super) type Context = HashMap<&'static str, String>;

/// Who a resource or trust policy is asked about.
#[derive(Debug, Clone, Default)]
pub(super) struct Principal {
    /// ARNs and account ids the principal answers to (`AWS`).
    aws: Vec<String>,
    /// A service principal (`Service`).
    service: Option<String>,
}

impl Principal {
    pub(super) fn service(name: &str) -> Self {
        Self {
            aws: Vec::new(),
            service: Some(name.to_owned()),
        }
    }

    /// A role's session: the role, its assumed-role ARN pattern, its account.
    pub(super) fn role(role_arn: &str, account: &str) -> Self {
        Self {
            aws: vec![
                role_arn.to_owned(),
                format!(
                    "arn:aws:sts::{account}:assumed-role/{}/",
                    role_name(role_arn)
                ),
                format!("arn:aws:iam::{account}:root"),
                account.to_owned(),
            ],
            service: None,
        }
    }

    fn matches(&self, element: &Value) -> bool {
        match element {
            Value::String(s) => s == "*",
            Value::Object(map) => map.iter().any(|(kind, values)| {
                let values = strings(values);
                match kind.as_str() {
                    "AWS" => values.iter().any(|v| {
                        *v == "*"
                            || self.aws.iter().any(|mine| {
                                mine == v || (mine.ends_with('/') && v.starts_with(mine.as_str()))
                            })
                    }),
                    "Service" => values.iter().any(|v| self.service.as_deref() == Some(*v)),
                    _ => false,
                }
            }),
            _ => false,
        }
    }
}

/// What a set of statements says of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Verdict {
    pub(super) allow: bool,
    pub(super) deny: bool,
}

impl Verdict {
    pub(super) fn or(self, other: Self) -> Self {
        Self {
            allow: self.allow || other.allow,
            deny: self.deny || other.deny,
        }
    }
}

fn strings(value: &Value) -> Vec<&str> {
    match value {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// `*` and `?` wildcards.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether a statement's `Condition` holds; `None` when it uses an operator
/// or key the plane cannot evaluate.
fn conditions_hold(conditions: &Value, context: &Context) -> Option<bool> {
    let conditions = conditions.as_object()?;
    for (operator, tests) in conditions {
        let (operator, if_exists) = match operator.strip_suffix("IfExists") {
            Some(base) => (base, true),
            None => (operator.as_str(), false),
        };
        for (key, wanted) in tests.as_object()? {
            let wanted = strings(wanted);
            let actual = context.get(key.to_ascii_lowercase().as_str());
            let Some(actual) = actual else {
                if if_exists || operator.contains("Not") {
                    continue;
                }
                if [
                    "aws:sourceaccount",
                    "aws:sourcearn",
                    "aws:principalaccount",
                    "aws:principalarn",
                    "iam:passedtoservice",
                    "s3:prefix",
                ]
                .contains(&key.to_ascii_lowercase().as_str())
                {
                    return Some(false);
                }
                return None;
            };
            let any = |f: &dyn Fn(&str) -> bool| wanted.iter().any(|w| f(w));
            let holds = match operator {
                "StringEquals" | "ArnEquals" => any(&|w| w == actual),
                "StringNotEquals" | "ArnNotEquals" => !any(&|w| w == actual),
                "StringEqualsIgnoreCase" => any(&|w| w.eq_ignore_ascii_case(actual)),
                "StringNotEqualsIgnoreCase" => !any(&|w| w.eq_ignore_ascii_case(actual)),
                "StringLike" | "ArnLike" => any(&|w| glob(w, actual)),
                "StringNotLike" | "ArnNotLike" => !any(&|w| glob(w, actual)),
                _ => return None,
            };
            if !holds {
                return Some(false);
            }
        }
    }
    Some(true)
}

/// Evaluates one policy document for `action` on `resource`. With
/// `principal`, it is a resource (or trust) policy: a statement applies only
/// when its `Principal` names it.
pub(super) fn evaluate(
    policy: &Value,
    action: &str,
    resource: &str,
    principal: Option<&Principal>,
    context: &Context,
) -> Verdict {
    let statements = match policy.get("Statement") {
        Some(Value::Array(items)) => items.iter().collect::<Vec<_>>(),
        Some(one @ Value::Object(_)) => vec![one],
        _ => Vec::new(),
    };
    let action = action.to_ascii_lowercase();
    let mut verdict = Verdict::default();
    for statement in statements {
        let matches_action = |element: &Value| {
            strings(element)
                .iter()
                .any(|p| glob(&p.to_ascii_lowercase(), &action))
        };
        let action_ok = match (statement.get("Action"), statement.get("NotAction")) {
            (Some(a), _) => matches_action(a),
            (None, Some(n)) => !matches_action(n),
            (None, None) => false,
        };
        let matches_resource = |element: &Value| strings(element).iter().any(|p| glob(p, resource));
        let resource_ok = match (statement.get("Resource"), statement.get("NotResource")) {
            (Some(r), _) => matches_resource(r),
            (None, Some(n)) => !matches_resource(n),
            // Trust policies name no resource.
            (None, None) => true,
        };
        let principal_ok = match principal {
            None => true,
            Some(who) => match (statement.get("Principal"), statement.get("NotPrincipal")) {
                (Some(p), _) => who.matches(p),
                (None, Some(n)) => !who.matches(n),
                (None, None) => false,
            },
        };
        let condition_ok = match statement.get("Condition") {
            None => Some(true),
            Some(conditions) => conditions_hold(conditions, context),
        };
        if action_ok && resource_ok && principal_ok && condition_ok == Some(true) {
            match statement.get("Effect").and_then(Value::as_str) {
                Some("Allow") => verdict.allow = true,
                Some("Deny") => verdict.deny = true,
                _ => {}
            }
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::batch_jobs::BEDROCK_SERVICE;

    #[test]
    fn wildcards_match_like_iam() {
        assert!(glob("s3:*", "s3:getobject"));
        assert!(glob("arn:aws:s3:::b/*", "arn:aws:s3:::b/in/x.jsonl"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("arn:aws:s3:::b/*", "arn:aws:s3:::bb/x"));
        assert!(glob("*", ""));
    }

    #[test]
    fn trust_policies_are_evaluated_with_the_job_context() {
        let trust = json!({"Statement": [{"Effect": "Allow",
            "Principal": {"Service": "bedrock.amazonaws.com"}, "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": "111111111111"},
                          "ArnLike": {"aws:SourceArn": "arn:aws:bedrock:*:111111111111:model-invocation-job/*"}}}]});
        let who = Principal::service(BEDROCK_SERVICE);
        let context = |account: &str| {
            Context::from([
                ("aws:sourceaccount", account.to_owned()),
                (
                    "aws:sourcearn",
                    format!("arn:aws:bedrock:us-east-1:{account}:model-invocation-job/abc"),
                ),
            ])
        };
        let ok = evaluate(
            &trust,
            "sts:AssumeRole",
            "r",
            Some(&who),
            &context("111111111111"),
        );
        assert!(ok.allow);
        let other = evaluate(
            &trust,
            "sts:AssumeRole",
            "r",
            Some(&who),
            &context("222222222222"),
        );
        assert!(!other.allow);
        let lambda = Principal::service("lambda.amazonaws.com");
        assert!(
            !evaluate(
                &trust,
                "sts:AssumeRole",
                "r",
                Some(&lambda),
                &context("111111111111")
            )
            .allow
        );
    }
}
