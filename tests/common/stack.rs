//! A CloudFormation template evaluated in tests, as CloudFormation would for a
//! given set of parameter values (`tests/template.rs`, `tests/example_*.rs`),
//! and the EventBridge pattern matching the examples' rules need.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

pub const ROLE_A: &str = "arn:aws:iam::111111111111:role/BedrockRelayTarget";
/// What `AWS::NoValue` evaluates to until the enclosing list or map drops it.
pub const NO_VALUE: &str = "\u{0}AWS::NoValue";

/// A template with its parameters resolved: evaluates intrinsics (`Ref`, `Sub`,
/// `If`, `Join`, `Split`, `Select`, `GetAtt`, conditions) as CloudFormation does.
/// A resource's `Ref` is `ref:<name>` and `Fn::GetAtt` is `getatt:<name>.<attr>`
/// unless `resources` names a value for it.
pub struct Stack {
    pub template: serde_yaml::Value,
    pub params: HashMap<String, Value>,
    pub resources: HashMap<String, String>,
}

impl Stack {
    /// `path` (relative to the crate) with `overrides` for its parameters; panics
    /// on an unknown parameter or a required one left out, as CloudFormation refuses them.
    pub fn deploy(path: &str, overrides: &[(&str, &str)]) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        let template: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).expect("template")).expect("yaml");
        let declared = template["Parameters"].as_mapping().expect("parameters");
        for (name, _) in overrides {
            assert!(
                declared.contains_key(*name),
                "{} declares no parameter {name}",
                path.display()
            );
        }
        let mut params = HashMap::new();
        for (name, spec) in declared {
            let name = name.as_str().expect("name");
            let raw = match overrides.iter().find(|(k, _)| *k == name) {
                Some((_, v)) => (*v).to_owned(),
                None => match &spec["Default"] {
                    serde_yaml::Value::String(s) => s.clone(),
                    serde_yaml::Value::Number(n) => n.to_string(),
                    serde_yaml::Value::Null => panic!("parameter {name} is required"),
                    other => panic!("default of {name}: {other:?}"),
                },
            };
            let value = if spec["Type"].as_str() == Some("CommaDelimitedList") {
                Value::Array(raw.split(',').map(|s| Value::String(s.into())).collect())
            } else {
                Value::String(raw)
            };
            params.insert(name.to_owned(), value);
        }
        for (name, value) in [
            ("AWS::Partition", "aws"),
            ("AWS::Region", "us-east-1"),
            ("AWS::AccountId", "222222222222"),
            ("AWS::NoValue", NO_VALUE),
        ] {
            params.insert(name.to_owned(), Value::String(value.to_owned()));
        }
        Self {
            template,
            params,
            resources: HashMap::new(),
        }
    }

    /// The relay template with the lab's required parameters and `overrides`.
    pub fn relay(overrides: &[(&str, &str)]) -> Self {
        let mut all = vec![
            ("TargetRoleArn", ROLE_A),
            ("DestinationBucket", "relay-results"),
            ("DestinationPrefix", "results/"),
        ];
        all.extend_from_slice(overrides);
        Self::deploy("template.yaml", &all)
    }

    pub fn condition(&self, name: &str) -> bool {
        let body = &self.template["Conditions"][name];
        assert!(!body.is_null(), "no condition {name}");
        self.eval(body).as_bool().expect("a condition is a boolean")
    }

    pub fn reference(&self, name: &str) -> Value {
        if let Some(value) = self.params.get(name) {
            return value.clone();
        }
        if let Some(value) = self.resources.get(name) {
            return Value::String(value.clone());
        }
        assert!(
            !self.template["Resources"][name].is_null(),
            "Ref to unknown {name}"
        );
        Value::String(format!("ref:{name}"))
    }

    pub fn get_att(&self, target: &str) -> Value {
        if let Some(value) = self.resources.get(target) {
            return Value::String(value.clone());
        }
        let resource = target.split('.').next().expect("resource");
        assert!(
            !self.template["Resources"][resource].is_null(),
            "GetAtt of unknown {resource}"
        );
        Value::String(format!("getatt:{target}"))
    }

    pub fn sub(&self, text: &str, vars: &Map<String, Value>) -> Value {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').expect("closed ${") + start;
            let name = &rest[start + 2..end];
            let value = match vars.get(name) {
                Some(v) => v.clone(),
                None if name.contains('.') && !name.starts_with("AWS::") => self.get_att(name),
                None => self.reference(name),
            };
            out.push_str(value.as_str().expect("Sub of a string"));
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Value::String(out)
    }

    pub fn eval(&self, value: &serde_yaml::Value) -> Value {
        use serde_yaml::Value as Y;
        match value {
            Y::Tagged(tagged) => {
                let arg = &tagged.value;
                let list = |i: usize| self.eval(&arg[i]);
                match tagged.tag.to_string().as_str() {
                    "!Ref" => self.reference(arg.as_str().expect("Ref name")),
                    "!GetAtt" => self.get_att(arg.as_str().expect("GetAtt target")),
                    "!Condition" => Value::Bool(self.condition(arg.as_str().expect("name"))),
                    "!Sub" => match arg {
                        Y::String(text) => self.sub(text, &Map::new()),
                        _ => {
                            let vars = self.eval(&arg[1]);
                            self.sub(
                                arg[0].as_str().expect("Sub text"),
                                vars.as_object().expect("Sub variables"),
                            )
                        }
                    },
                    "!If" => {
                        let name = arg[0].as_str().expect("condition name");
                        if self.condition(name) {
                            list(1)
                        } else {
                            list(2)
                        }
                    }
                    "!Equals" => Value::Bool(list(0) == list(1)),
                    "!Not" => Value::Bool(!list(0).as_bool().expect("bool")),
                    "!And" | "!Or" => {
                        let values = arg
                            .as_sequence()
                            .expect("list")
                            .iter()
                            .map(|c| self.eval(c).as_bool().expect("bool"));
                        let values: Vec<bool> = values.collect();
                        Value::Bool(if tagged.tag == "!And" {
                            values.iter().all(|b| *b)
                        } else {
                            values.iter().any(|b| *b)
                        })
                    }
                    "!Join" => {
                        let delimiter = arg[0].as_str().expect("literal delimiter");
                        let parts = list(1);
                        let parts: Vec<&str> = parts
                            .as_array()
                            .expect("Join list")
                            .iter()
                            .map(|p| p.as_str().expect("Join of strings"))
                            .collect();
                        Value::String(parts.join(delimiter))
                    }
                    "!Split" => {
                        let delimiter = arg[0].as_str().expect("literal delimiter");
                        let text = list(1);
                        Value::Array(
                            text.as_str()
                                .expect("Split of a string")
                                .split(delimiter)
                                .map(|s| Value::String(s.into()))
                                .collect(),
                        )
                    }
                    "!Select" => {
                        let index = arg[0].as_u64().expect("index") as usize;
                        list(1)
                            .as_array()
                            .expect("Select list")
                            .get(index)
                            .cloned()
                            .expect("Select index in range")
                    }
                    other => panic!("intrinsic {other} not supported by this test"),
                }
            }
            Y::Sequence(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.eval(i))
                    .filter(|v| v != NO_VALUE)
                    .collect(),
            ),
            Y::Mapping(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.as_str().expect("key").to_owned(), self.eval(v)))
                    .filter(|(_, v)| v != NO_VALUE)
                    .collect(),
            ),
            plain => serde_json::to_value(plain).expect("plain value"),
        }
    }

    /// The execution role's inline policy statements.
    pub fn statements(&self) -> Vec<Value> {
        let policy = &self.template["Resources"]["ExecutionRole"]["Properties"]["Policies"][0];
        self.eval(&policy["PolicyDocument"]["Statement"])
            .as_array()
            .expect("statements")
            .clone()
    }

    pub fn statement(&self, sid: &str) -> Option<Value> {
        self.statements().into_iter().find(|s| s["Sid"] == sid)
    }

    pub fn sids(&self) -> Vec<String> {
        self.statements()
            .iter()
            .map(|s| {
                s["Sid"]
                    .as_str()
                    .expect("every statement has a Sid")
                    .to_owned()
            })
            .collect()
    }

    /// The function's environment variable `name`.
    pub fn env(&self, name: &str) -> String {
        let vars = self.eval(
            &self.template["Resources"]["RelayFunction"]["Properties"]["Environment"]["Variables"],
        );
        vars[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} is not set"))
            .to_owned()
    }
}

/// `*`-only glob, as EventBridge `wildcard` and IAM resources use it.
pub fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.starts_with(head)
                && (0..=text.len() - head.len()).any(|i| glob(tail, &text[head.len() + i..]))
        }
    }
}

/// EventBridge pattern matching for the operators the example uses: a field
/// matches if any listed value or operator (`prefix`, `suffix`, `wildcard`,
/// `exists`) matches it; nested objects match field by field.
pub fn matches(pattern: &Value, event: &Value) -> bool {
    pattern
        .as_object()
        .expect("pattern object")
        .iter()
        .all(|(field, rule)| {
            let value = &event[field];
            match rule {
                Value::Object(_) => value.is_object() && matches(rule, value),
                Value::Array(options) => options.iter().any(|option| match option {
                    Value::Object(op) => {
                        let (name, arg) = op.iter().next().expect("operator");
                        let text = value.as_str();
                        match name.as_str() {
                            "prefix" => text.is_some_and(|t| t.starts_with(arg.as_str().unwrap())),
                            "suffix" => text.is_some_and(|t| t.ends_with(arg.as_str().unwrap())),
                            "wildcard" => text.is_some_and(|t| glob(arg.as_str().unwrap(), t)),
                            "exists" => arg.as_bool() == Some(!value.is_null()),
                            other => panic!("operator {other} not supported by this test"),
                        }
                    }
                    literal => value == literal,
                }),
                other => panic!("pattern field {field}: {other}"),
            }
        })
}
