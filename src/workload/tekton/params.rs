//! Tekton parameters: what a `$(params...)` expression stands for at admission time.
//!
//! Values flow run → pipeline → pipeline task → task → step action, defaults may name other params
//! (see [`declared_defaults`]), and `$(context.…)` names the run when its name is fixed (see
//! [`context_key`]). Some values are only known when the run executes (task results, a generated
//! name, uids): those stay [`Param::Unknown`] so that an image built from them is skipped with a
//! warning instead of being checked as a wrong string.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Bad;

/// One parameter's value as far as admission can know it.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// A string, an array of strings or an object of strings.
    Known(Value),
    /// Only known at run time; holds the expression that made it so, for the warning.
    Unknown(String),
}

/// The parameters visible in one scope, by name.
pub type Params = BTreeMap<String, Param>;

/// Where a `$(context.…)` variable known at admission sits in a scope, e.g.
/// `context_key("context.pipelineRun.name")`. A param name never starts with `$`, so a param cannot
/// shadow it.
pub fn context_key(variable: &str) -> String {
    format!("${variable}")
}

/// Where a scope records that its param list was cut at [`MAX_SCOPE_BYTES`]: every name the
/// scope does not hold is then unknown, since the list may have given it past the cut. One entry,
/// so that a list of 100,000 params costs what the budget allows and no more. Starts with `$`, as
/// context keys do, so no param can be named so.
const OVER_BUDGET: &str = "$over-budget";

/// A param by name; a name a cut list may have held is [`Param::Unknown`].
pub fn lookup<'s>(scope: &'s Params, name: &str) -> Option<&'s Param> {
    scope.get(name).or_else(|| {
        // Context keys come from archgate, never from a list.
        (!name.starts_with('$'))
            .then(|| scope.get(OVER_BUDGET))
            .flatten()
    })
}

/// Layer `top` over `base`: later scopes win, as Tekton's precedence rules say.
pub fn overlay(base: &Params, top: &Params) -> Params {
    let mut out = beneath(base, top);
    out.extend(top.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// What of `base` shows beneath `top`: all of it, or when `top` was cut, only the context (any
/// other name may have been given in the part of `top` that was cut, so a default beneath it must
/// not show through).
fn beneath(base: &Params, top: &Params) -> Params {
    if top.contains_key(OVER_BUDGET) {
        base.iter()
            .filter(|(k, _)| k.starts_with('$'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    } else {
        base.clone()
    }
}

/// The most bytes one substituted value may hold. References multiply text (`$(params.a)$(params.a)`,
/// chained through defaults, pipeline task params and nested pipelines), so a run of a few
/// kilobytes could otherwise ask for gigabytes. Images, `when` values and pod-template fields are
/// far shorter; a longer value is unknown, which only matters if an image is built from it.
pub const MAX_VALUE_BYTES: usize = 16 << 10;

/// The most bytes the values of one param list (a run's, a pipeline task's, a spec's defaults)
/// may hold together; past it the remaining values are unknown. With [`MAX_VALUE_BYTES`] this
/// bounds a scope whatever the number of params.
pub const MAX_SCOPE_BYTES: usize = 256 << 10;

/// What one param costs against [`MAX_SCOPE_BYTES`] besides its name and value: a map entry and
/// its strings. Counted so that params with short names and empty values, which hold almost no
/// text, still come to an end (at most 1024 per list), since every task run copies its scope.
pub const ENTRY_BYTES: usize = 256;

/// How many rounds of "a default names another param" are followed. Tekton's Pipeline reconciler
/// stops at the same depth (`maxParamReferenceDepth`, pkg/reconciler/pipelinerun/resources/apply.go)
/// and fails the run past it; here the rest stays unknown.
const MAX_REFERENCE_DEPTH: usize = 10;

/// The defaults a Task, Pipeline or StepAction declares (`spec.params[].default`), each resolved.
///
/// A default may name other params (`default: "$(params.registry)/tool:1"`): Tekton resolves those in
/// StepActions and Tasks since v0.68 and in Pipelines since v1.9 (docs/stepactions.md "Parameter
/// Substitution Precedence"; pkg/reconciler/pipelinerun/resources/apply.go `ApplyParameters`). A
/// reference sees `refs` first (what the resource was given, for Pipelines and StepActions; only
/// the context for Tasks, whose reconciler resolves defaults from the other defaults before the
/// TaskRun's values are laid over them), then the other defaults, following chains up to
/// [`MAX_REFERENCE_DEPTH`]. What stays unresolved (a cycle, a missing param, a run-time value) is
/// [`Param::Unknown`]: Tekton fails such a run, so nothing from it runs.
pub fn declared_defaults(params: Option<&Value>, refs: &Params, path: &str) -> Result<Params, Bad> {
    let mut out = Params::new();
    let mut pending = Vec::new();
    let mut budget = Budget::default();
    for (i, param) in list(params, path)?.iter().enumerate() {
        let here = format!("{path}[{i}]");
        let name = param_name(param, &here)?;
        if !budget.admit(&name) {
            out.insert(OVER_BUDGET.to_string(), over_budget(path));
            break;
        }
        if let Some(default) = param.get("default") {
            let here = format!("{here}.default");
            let value = normalise(default, &here)?;
            if mentions_variable(&value) {
                pending.push((name, value, here));
            } else {
                out.insert(name, budget.spend(Param::Known(value), &here));
            }
        }
    }
    let mut unresolved = Vec::new();
    for _ in 0..MAX_REFERENCE_DEPTH {
        if pending.is_empty() {
            break;
        }
        let visible = overlay(&out, refs);
        let before = pending.len();
        unresolved.clear();
        for (name, value, here) in std::mem::take(&mut pending) {
            match substitute_value(&value, &visible, &here)? {
                known @ Param::Known(_) => {
                    out.insert(name, budget.spend(known, &here));
                }
                Param::Unknown(expr) => {
                    unresolved.push((name.clone(), expr));
                    pending.push((name, value, here));
                }
            }
        }
        if pending.len() == before {
            break;
        }
    }
    for (name, expr) in unresolved {
        out.entry(name).or_insert(Param::Unknown(expr));
    }
    Ok(out)
}

/// Whether a (normalised) value holds a `$(...)` anywhere.
fn mentions_variable(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains("$("),
        Value::Array(items) => items.iter().any(mentions_variable),
        Value::Object(map) => map.values().any(mentions_variable),
        _ => false,
    }
}

/// Layer `given` over a Task's or StepAction's `defaults`: an object param given only some of its
/// keys takes the others from its default (docs/tasks.md "Specifying Parameters": "one may provide
/// values for just a subset of keys in spec's default"; pkg/reconciler/taskrun/resources/apply.go
/// `getTaskParameters` merges key by key). Pipelines take a run's object whole.
pub fn overlay_objects(defaults: &Params, given: &Params) -> Params {
    let mut out = beneath(defaults, given);
    for (name, value) in given {
        let merged = match (out.get(name), value) {
            (Some(Param::Known(Value::Object(base))), Param::Known(Value::Object(top))) => {
                let mut map = base.clone();
                map.extend(top.iter().map(|(k, v)| (k.clone(), v.clone())));
                Param::Known(Value::Object(map))
            }
            _ => value.clone(),
        };
        out.insert(name.clone(), merged);
    }
    out
}

/// The names a spec declares, with or without a default, as far as [`MAX_SCOPE_BYTES`] reaches
/// (as [`declared_defaults`] reads them).
pub fn declared_names(params: Option<&Value>, path: &str) -> Result<Vec<String>, Bad> {
    let mut budget = Budget::default();
    let mut names = Vec::new();
    for (i, param) in list(params, path)?.iter().enumerate() {
        let name = param_name(param, &format!("{path}[{i}]"))?;
        if !budget.admit(&name) {
            break;
        }
        names.push(name);
    }
    Ok(names)
}

/// `params: [{name, value}]` of a run, pipeline task or step, each value substituted in `scope`.
pub fn passed(params: Option<&Value>, scope: &Params, path: &str) -> Result<Params, Bad> {
    let mut out = Params::new();
    let mut budget = Budget::default();
    for (i, param) in list(params, path)?.iter().enumerate() {
        let here = format!("{path}[{i}]");
        let name = param_name(param, &here)?;
        if !budget.admit(&name) {
            out.insert(OVER_BUDGET.to_string(), over_budget(path));
            break;
        }
        let value = param.get("value").unwrap_or(&Value::Null);
        let value = substitute_value(value, scope, &format!("{here}.value"))?;
        out.insert(name, budget.spend(value, &here));
    }
    Ok(out)
}

/// What one param list has spent of [`MAX_SCOPE_BYTES`]: names, values and [`ENTRY_BYTES`] each.
#[derive(Default)]
struct Budget(usize);

impl Budget {
    /// Counts one more param named `name`; `false` once the list is over the budget (its value
    /// has not been counted yet, so a param with a huge value is still named, as unknown).
    fn admit(&mut self, name: &str) -> bool {
        self.0 = self.0.saturating_add(name.len() + ENTRY_BYTES);
        self.0 <= MAX_SCOPE_BYTES
    }

    fn spend(&mut self, param: Param, path: &str) -> Param {
        if let Param::Known(value) = &param {
            self.0 = self.0.saturating_add(size(value));
            if self.0 > MAX_SCOPE_BYTES {
                return over_budget(path);
            }
        }
        param
    }
}

fn over_budget(path: &str) -> Param {
    Param::Unknown(format!(
        "{path} (params over {} KiB)",
        MAX_SCOPE_BYTES >> 10
    ))
}

/// The bytes of text a value holds.
fn size(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(size).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| k.len() + size(v)).sum(),
        _ => 0,
    }
}

fn oversize(expr: &str) -> String {
    format!("{expr} (over {} KiB)", MAX_VALUE_BYTES >> 10)
}

/// A list field that may be absent; anything but a list is bad input.
pub fn list<'a>(value: Option<&'a Value>, path: &str) -> Result<&'a [Value], Bad> {
    match value {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(Bad(format!("{path} is not a list"))),
    }
}

fn param_name(param: &Value, path: &str) -> Result<String, Bad> {
    match param.get("name") {
        Some(Value::String(name)) => Ok(name.clone()),
        _ => Err(Bad(format!("{path}.name is missing or not a string"))),
    }
}

/// Tekton reads YAML numbers and booleans in params as their text; null as the empty string.
fn normalise(value: &Value, path: &str) -> Result<Value, Bad> {
    Ok(match value {
        Value::Null => Value::String(String::new()),
        Value::Bool(b) => Value::String(b.to_string()),
        Value::Number(n) => Value::String(n.to_string()),
        Value::String(_) => value.clone(),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| scalar(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), scalar(v, &format!("{path}.{k}"))?)))
                .collect::<Result<_, Bad>>()?,
        ),
    })
}

fn scalar(value: &Value, path: &str) -> Result<Value, Bad> {
    match value {
        Value::Array(_) | Value::Object(_) => Err(Bad(format!("{path} must be a string"))),
        other => normalise(other, path),
    }
}

/// Which spellings of a param reference are substituted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forms {
    /// Also `$( params.x )` and v1alpha1's `$(inputs.params.x)`: for images, where a wrong guess
    /// only checks an image the step could not pull anyway.
    Lenient,
    /// Only the text Tekton's pipeline reconciler replaces: `params.x`, `params["x"]` and
    /// `params['x']`, each alone or with `[N]` (arrays) or `[*]`, and `params.x.key` (objects)
    /// (pkg/reconciler/pipelinerun/resources/apply.go `paramPatterns` and
    /// `objectIndividualVariablePattern`), plus context and run-time variables written exactly.
    /// `pkg/substitution/replacements.go` `ApplyReplacements` matches whole `$(key)` texts, so any
    /// other spelling stays as written. For `when`, where a wrong guess skips a task that runs.
    Literal,
}

/// Substitute a param value: a string, an array (where `$(params.a[*])` splices an array param) or
/// an object. A whole-value reference to an array or object param passes that value through.
pub fn substitute_value(value: &Value, scope: &Params, path: &str) -> Result<Param, Bad> {
    substitute_value_as(value, scope, path, Forms::Lenient)
}

/// [`substitute_value`] reading only the given [`Forms`].
pub fn substitute_value_as(
    value: &Value,
    scope: &Params,
    path: &str,
    forms: Forms,
) -> Result<Param, Bad> {
    let value = normalise(value, path)?;
    let text = |text: &str| substitute_as(text, scope, forms);
    Ok(match &value {
        Value::String(s) => match whole_reference(s, scope, forms) {
            Some(param) => param,
            None => known_or_unknown(text(s).map(Value::String)),
        },
        Value::Array(items) => {
            let mut out = Vec::new();
            let mut bytes = 0usize;
            for item in items {
                let item = item.as_str().unwrap_or_default();
                let added = match whole_reference(item, scope, forms) {
                    Some(Param::Known(Value::Array(spliced))) => spliced,
                    Some(Param::Unknown(expr)) => return Ok(Param::Unknown(expr)),
                    _ => match text(item) {
                        Ok(s) => vec![Value::String(s)],
                        Err(expr) => return Ok(Param::Unknown(expr)),
                    },
                };
                bytes = bytes.saturating_add(added.iter().map(size).sum());
                if bytes > MAX_VALUE_BYTES {
                    return Ok(Param::Unknown(oversize(path)));
                }
                out.extend(added);
            }
            Param::Known(Value::Array(out))
        }
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            let mut bytes = 0usize;
            for (key, item) in map {
                let s = match text(item.as_str().unwrap_or_default()) {
                    Ok(s) => s,
                    Err(expr) => return Ok(Param::Unknown(expr)),
                };
                bytes = bytes.saturating_add(key.len() + s.len());
                if bytes > MAX_VALUE_BYTES {
                    return Ok(Param::Unknown(oversize(path)));
                }
                out.insert(key.clone(), Value::String(s));
            }
            Param::Known(Value::Object(out))
        }
        _ => Param::Known(value.clone()),
    })
}

fn known_or_unknown(result: Result<Value, String>) -> Param {
    match result {
        Ok(value) => Param::Known(value),
        Err(expr) => Param::Unknown(expr),
    }
}

/// `$(params.x)` or `$(params.x[*])` standing alone for an array or object param.
fn whole_reference(text: &str, scope: &Params, forms: Forms) -> Option<Param> {
    let text = match forms {
        Forms::Lenient => text.trim(),
        // `ApplyArrayReplacements` splices only when the text is exactly `$(key)`.
        Forms::Literal => text,
    };
    let inner = text.strip_prefix("$(")?.strip_suffix(')')?;
    if inner.contains("$(") || !counts(inner, forms) {
        return None;
    }
    let reference = parse_reference(inner)?;
    if !matches!(reference.access.as_slice(), [] | [Access::All]) {
        return None;
    }
    match lookup(scope, &reference.name) {
        Some(Param::Known(v @ (Value::Array(_) | Value::Object(_)))) => {
            Some(Param::Known(v.clone()))
        }
        Some(Param::Unknown(expr)) => Some(Param::Unknown(expr.clone())),
        _ => None,
    }
}

/// Why [`substitute_within`] stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Unsubstituted {
    /// The first expression admission cannot know, as written (or as the value that made it
    /// unknown says).
    Unknown(String),
    /// The text grew past the bound with this expression; what was built so far (already longer
    /// than the bound) is kept for the message.
    TooLong { expr: String, partial: String },
}

/// Replace every `$(...)` in `text`. `Err` carries the first expression admission cannot know.
pub fn substitute(text: &str, scope: &Params) -> Result<String, String> {
    substitute_as(text, scope, Forms::Lenient)
}

/// [`substitute`] reading only the given [`Forms`].
pub fn substitute_as(text: &str, scope: &Params, forms: Forms) -> Result<String, String> {
    substitute_within(text, scope, forms, MAX_VALUE_BYTES).map_err(|stop| match stop {
        Unsubstituted::Unknown(expr) => expr,
        Unsubstituted::TooLong { expr, .. } => oversize(&expr),
    })
}

/// [`substitute`], stopping as soon as an expression makes the text longer than `max` bytes.
pub fn substitute_within(
    text: &str,
    scope: &Params,
    forms: Forms,
    max: usize,
) -> Result<String, Unsubstituted> {
    let mut out = String::with_capacity(text.len().min(max));
    let mut rest = text;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = closing_paren(after) else {
            // An unterminated `$(` is not a Tekton variable; Tekton leaves it as written.
            return Err(Unsubstituted::Unknown(rest[start..].to_string()));
        };
        let expr = &after[..end];
        if counts(expr, forms) {
            out.push_str(evaluate(expr, scope).map_err(Unsubstituted::Unknown)?);
        } else {
            out.push_str(&rest[start..start + 2 + end + 1]);
        }
        if out.len() > max {
            return Err(Unsubstituted::TooLong {
                expr: format!("$({expr})"),
                partial: out,
            });
        }
        rest = &after[end + 1..];
    }
    // Text after the last expression is the caller's own to bound (it was not multiplied).
    out.push_str(rest);
    Ok(out)
}

/// Whether Tekton would replace `$(expr)` under `forms` (see [`Forms::Literal`]); one it would not
/// stays in the text as written.
fn counts(expr: &str, forms: Forms) -> bool {
    if forms == Forms::Lenient {
        return true;
    }
    if expr != expr.trim() || expr.starts_with("inputs.") {
        return false;
    }
    if !expr.starts_with("params") {
        // Context and run-time variables (`tasks.…`, `workspaces.…`): evaluated, or unknown.
        return true;
    }
    let Some(reference) = parse_reference(expr) else {
        return false;
    };
    let name = &reference.name;
    let suffix = match reference.access.as_slice() {
        [] => String::new(),
        [Access::Index(i)] => format!("[{i}]"),
        [Access::All] => "[*]".to_string(),
        // Object keys only in the dotted form (`objectIndividualVariablePattern`).
        [Access::Key(key)] => return expr == format!("params.{name}.{key}"),
        _ => return false,
    };
    [
        format!("params.{name}{suffix}"),
        format!("params[\"{name}\"]{suffix}"),
        format!("params['{name}']{suffix}"),
    ]
    .contains(&expr.to_string())
}

/// The `)` closing an expression, skipping any inside quoted keys (`$(params["a)b"])`).
fn closing_paren(text: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, ')') => return Some(i),
            _ => {}
        }
    }
    None
}

/// The string one expression stands for, borrowed from the scope (an array or object param may
/// hold 16 KiB, and `$(params.a[0])` needs one element of it), or `Err` with the expression as the
/// user wrote it.
fn evaluate<'s>(expr: &str, scope: &'s Params) -> Result<&'s str, String> {
    let unknown = || format!("$({expr})");
    if expr.trim().starts_with("context.") {
        return match scope.get(&context_key(expr.trim())) {
            Some(Param::Known(Value::String(value))) => Ok(value),
            _ => Err(unknown()),
        };
    }
    let reference = parse_reference(expr).ok_or_else(unknown)?;
    let mut value = match lookup(scope, &reference.name) {
        Some(Param::Known(value)) => value,
        Some(Param::Unknown(inner)) => return Err(inner.clone()),
        None => return Err(unknown()),
    };
    for access in &reference.access {
        value = match (access, value) {
            (Access::Key(key), Value::Object(map)) => map.get(key).ok_or_else(unknown)?,
            (Access::Index(i), Value::Array(items)) => items.get(*i).ok_or_else(unknown)?,
            _ => return Err(unknown()),
        };
    }
    value.as_str().ok_or_else(unknown)
}

/// One step into a param value after its name.
#[derive(Debug, PartialEq)]
enum Access {
    Key(String),
    Index(usize),
    /// `[*]`: the whole array, only meaningful where arrays are allowed.
    All,
}

#[derive(Debug, PartialEq)]
struct Reference {
    name: String,
    access: Vec<Access>,
}

/// `params.x`, `params["x"]`, `params['x']`, `inputs.params.x` (v1alpha1 spelling), each followed
/// by `.key`, `["key"]`, `[N]` or `[*]`. `None` for anything else (results, context, workspaces).
fn parse_reference(expr: &str) -> Option<Reference> {
    let expr = expr.trim();
    let rest = expr
        .strip_prefix("inputs.params")
        .or_else(|| expr.strip_prefix("params"))?;
    let (name, mut rest) = if let Some(dotted) = rest.strip_prefix('.') {
        let end = dotted.find(['.', '[']).unwrap_or(dotted.len());
        (dotted[..end].to_string(), &dotted[end..])
    } else {
        bracket_key(rest)?
    };
    if name.is_empty() {
        return None;
    }
    let mut access = Vec::new();
    while !rest.is_empty() {
        if let Some(dotted) = rest.strip_prefix('.') {
            let end = dotted.find(['.', '[']).unwrap_or(dotted.len());
            access.push(Access::Key(dotted[..end].to_string()));
            rest = &dotted[end..];
        } else if let Some(after) = rest.strip_prefix("[*]") {
            access.push(Access::All);
            rest = after;
        } else if let Some((key, after)) = bracket_key(rest) {
            access.push(Access::Key(key));
            rest = after;
        } else {
            let inner = rest.strip_prefix('[')?;
            let end = inner.find(']')?;
            access.push(Access::Index(inner[..end].trim().parse().ok()?));
            rest = &inner[end + 1..];
        }
    }
    Some(Reference { name, access })
}

/// `["key"]` or `['key']` at the start of `text`: the key and what follows.
fn bracket_key(text: &str) -> Option<(String, &str)> {
    let inner = text.strip_prefix('[')?;
    let quote = inner.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let inner = &inner[1..];
    let end = inner.find(quote)?;
    let after = inner[end + 1..].strip_prefix(']')?;
    Some((inner[..end].to_string(), after))
}

/// Tekton's default `default-max-matrix-combinations-count`. Tekton rejects a bigger matrix, and
/// expanding one here would let a run of a few hundred bytes exhaust the webhook's memory.
pub const MAX_MATRIX_COMBINATIONS: usize = 256;

/// The params of each TaskRun a `matrix` fans a pipeline task out to, in TaskRun order (one empty
/// set without a matrix, none when a matrix param is an empty array: Tekton then skips the task).
///
/// Follows pkg/apis/pipeline/v1/matrix_types.go: `FanOut` gives the combinations and
/// `CountCombinations` how many TaskRuns the reconciler creates, the i-th running the i-th
/// combination, or no matrix params at all past the end (pkg/reconciler/pipelinerun/pipelinerun.go
/// `createTaskRuns`). The two disagree for some includes, and the TaskRuns are what runs images.
/// Values are compared as archgate holds them: an unknown value equals only the same unknown.
pub fn matrix_combinations(
    matrix: Option<&Value>,
    scope: &Params,
    path: &str,
) -> Result<Vec<Params>, Bad> {
    let Some(matrix) = matrix.filter(|m| !m.is_null()) else {
        return Ok(vec![Params::new()]);
    };
    if !matrix.is_object() {
        return Err(Bad(format!("{path} is not an object")));
    }
    let mut fanned: Vec<(String, Vec<Param>)> = Vec::new();
    let mut product = 1usize;
    for (i, param) in list(matrix.get("params"), &format!("{path}.params"))?
        .iter()
        .enumerate()
    {
        let here = format!("{path}.params[{i}]");
        let name = param_name(param, &here)?;
        let value = param.get("value").unwrap_or(&Value::Null);
        let values = match substitute_value(value, scope, &format!("{here}.value"))? {
            Param::Known(Value::Array(items)) => items.into_iter().map(Param::Known).collect(),
            Param::Known(other) => vec![Param::Known(other)],
            unknown @ Param::Unknown(_) => vec![unknown],
        };
        if values.is_empty() {
            return Ok(Vec::new());
        }
        product = product.saturating_mul(values.len());
        if product > MAX_MATRIX_COMBINATIONS {
            return Err(too_many_combinations(path));
        }
        fanned.push((name, values));
    }
    let mut includes = Vec::new();
    for (i, include) in list(matrix.get("include"), &format!("{path}.include"))?
        .iter()
        .enumerate()
    {
        let here = format!("{path}.include[{i}]");
        includes.push(passed(
            include.get("params"),
            scope,
            &format!("{here}.params"),
        )?);
    }
    if fanned.is_empty() {
        // Include only (or an empty matrix): each include is one TaskRun, as `FanOut` and
        // `CountCombinations` agree.
        if includes.len() > MAX_MATRIX_COMBINATIONS {
            return Err(too_many_combinations(path));
        }
        if includes.is_empty() {
            includes.push(Params::new());
        }
        return Ok(includes);
    }
    let count = product.saturating_add(counted_includes(&fanned, matrix, scope, path)?);
    if count > MAX_MATRIX_COMBINATIONS {
        return Err(too_many_combinations(path));
    }
    let mut combos = cartesian(&fanned);
    overwrite_with_includes(&mut combos, &includes);
    append_new_includes(&mut combos, &includes, count);
    combos.resize(count, Params::new());
    Ok(combos)
}

fn too_many_combinations(path: &str) -> Bad {
    Bad(format!(
        "{path} fans out to more than {MAX_MATRIX_COMBINATIONS} combinations, Tekton's default limit"
    ))
}

/// The Cartesian product in Tekton's order (matrix_types.go `distribute`): each further param
/// repeats the combinations so far once per value, value by value, so with `os: [linux, windows]`
/// then `arch: [amd64, arm64]` TaskRun 1 is `windows`/`amd64`, which `$(context.taskRun.name)`
/// shows.
fn cartesian(fanned: &[(String, Vec<Param>)]) -> Vec<Params> {
    let mut combos = vec![Params::new()];
    for (name, values) in fanned {
        combos = values
            .iter()
            .flat_map(|value| {
                combos.iter().map(move |combo| {
                    let mut next = combo.clone();
                    next.insert(name.clone(), value.clone());
                    next
                })
            })
            .collect();
    }
    combos
}

/// matrix_types.go `overwriteCombinations`: every include adds its params to each of the
/// matrix's combinations that agrees with it on every name they share, earlier includes' names
/// included, so a second include cannot overwrite what a first one added.
fn overwrite_with_includes(combos: &mut [Params], includes: &[Params]) {
    for combo in combos {
        for include in includes {
            let agrees = include
                .iter()
                .all(|(name, value)| combo.get(name).is_none_or(|held| held == value));
            if agrees {
                combo.extend(include.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
    }
}

/// matrix_types.go `addNewCombinations`: a non-empty include becomes a combination of its own
/// unless some combination (one appended before it included) already holds one of its values.
/// Appended includes are not overwritten by later ones: that step has already run.
///
/// Stops at `count`: a combination past the TaskRuns never runs, and one appended there could
/// only keep later includes from being appended further on. Without the stop, thousands of
/// includes that each add an unrelated value (which `CountCombinations` does not count) would
/// cost their number squared.
fn append_new_includes(combos: &mut Vec<Params>, includes: &[Params], count: usize) {
    for include in includes.iter().filter(|include| !include.is_empty()) {
        if combos.len() >= count {
            return;
        }
        let shares_a_value = combos
            .iter()
            .any(|combo| include.iter().any(|(k, v)| combo.get(k) == Some(v)));
        if !shares_a_value {
            combos.push(include.clone());
        }
    }
}

/// The TaskRuns includes add (matrix_types.go `countNewCombinationsFromInclude`): walking an
/// include's params in their written order, one for each matrix param whose value the matrix
/// lacks, stopping at the first whose value it has. Names that are not matrix params add none, so
/// an include that only adds params never gets a TaskRun of its own.
fn counted_includes(
    fanned: &[(String, Vec<Param>)],
    matrix: &Value,
    scope: &Params,
    path: &str,
) -> Result<usize, Bad> {
    let mut count = 0usize;
    for (i, include) in list(matrix.get("include"), &format!("{path}.include"))?
        .iter()
        .enumerate()
    {
        let here = format!("{path}.include[{i}].params");
        // Written order matters here and a `Params` map has lost it, so read the list again.
        for (j, param) in list(include.get("params"), &here)?.iter().enumerate() {
            let at = format!("{here}[{j}]");
            let name = param_name(param, &at)?;
            let Some((_, values)) = fanned.iter().find(|(fanned, _)| *fanned == name) else {
                continue;
            };
            let value = param.get("value").unwrap_or(&Value::Null);
            let value = substitute_value(value, scope, &format!("{at}.value"))?;
            if values.contains(&value) {
                break;
            }
            count = count.saturating_add(1);
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope(pairs: &[(&str, Value)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Param::Known(v.clone())))
            .collect()
    }

    #[test]
    fn substitutes_every_reference_form() {
        let s = scope(&[
            ("version", json!("1.22")),
            ("dotted.name", json!("quay.io/x")),
            ("obj", json!({"image": "alpine", "tag": "3"})),
            ("arr", json!(["a", "b"])),
        ]);
        let cases = [
            ("golang:$(params.version)", Ok("golang:1.22")),
            ("golang:$(params[\"version\"])", Ok("golang:1.22")),
            ("golang:$(params['version'])", Ok("golang:1.22")),
            ("golang:$(inputs.params.version)", Ok("golang:1.22")),
            ("$(params[\"dotted.name\"]):1", Ok("quay.io/x:1")),
            ("$(params.obj.image):$(params.obj.tag)", Ok("alpine:3")),
            ("$(params.obj[\"image\"])", Ok("alpine")),
            ("$(params.arr[1])", Ok("b")),
            ("plain", Ok("plain")),
            ("$(params.arr)", Err("$(params.arr)")),
            ("$(params.arr[*])", Err("$(params.arr[*])")),
            ("$(params.arr[5])", Err("$(params.arr[5])")),
            ("$(params.missing)", Err("$(params.missing)")),
            ("$(tasks.a.results.b)", Err("$(tasks.a.results.b)")),
            (
                "$(context.pipelineRun.name)",
                Err("$(context.pipelineRun.name)"),
            ),
            ("$(workspaces.src.path)/x", Err("$(workspaces.src.path)")),
            ("img:$(params.version", Err("$(params.version")),
        ];
        for (text, want) in cases {
            let got = substitute(text, &s);
            assert_eq!(
                got.as_deref(),
                want.map_err(String::from).as_deref(),
                "{text}"
            );
        }
    }

    #[test]
    fn unknown_params_carry_the_expression_that_made_them_unknown() {
        let mut s = Params::new();
        s.insert(
            "ref".into(),
            Param::Unknown("$(tasks.a.results.digest)".into()),
        );
        assert_eq!(
            substitute("x@$(params.ref)", &s),
            Err("$(tasks.a.results.digest)".into())
        );
    }

    #[test]
    fn whole_values_pass_arrays_and_objects_through() {
        let s = scope(&[
            ("arr", json!(["a", "b"])),
            ("obj", json!({"k": "v"})),
            ("v", json!("x")),
        ]);
        let cases = [
            (json!("$(params.arr[*])"), Param::Known(json!(["a", "b"]))),
            (json!("$(params.arr)"), Param::Known(json!(["a", "b"]))),
            (
                json!(["$(params.arr[*])", "c"]),
                Param::Known(json!(["a", "b", "c"])),
            ),
            (json!("$(params.obj)"), Param::Known(json!({"k": "v"}))),
            (json!({"k": "$(params.v)"}), Param::Known(json!({"k": "x"}))),
            (json!(3), Param::Known(json!("3"))),
            (json!(true), Param::Known(json!("true"))),
            (
                json!("$(tasks.t.results.r)"),
                Param::Unknown("$(tasks.t.results.r)".into()),
            ),
        ];
        for (value, want) in cases {
            assert_eq!(substitute_value(&value, &s, "v").unwrap(), want, "{value}");
        }
        assert!(substitute_value(&json!([[1]]), &s, "p").is_err());
    }

    #[test]
    fn matrix_fans_out_params_and_includes() {
        let s = scope(&[("platforms", json!(["linux", "windows"]))]);
        let matrix = json!({
            "params": [
                {"name": "platform", "value": "$(params.platforms[*])"},
                {"name": "browser", "value": ["chrome", "safari"]}
            ],
            "include": [
                {"name": "extra", "params": [{"name": "browser", "value": "chrome"}, {"name": "url", "value": "u"}]},
                {"name": "new", "params": [{"name": "platform", "value": "mac"}]}
            ]
        });
        let combos = matrix_combinations(Some(&matrix), &s, "m").unwrap();
        // Tekton's order (`distribute`): the later param's values on the outside.
        assert_eq!(
            rendered(&combos),
            [
                "browser=chrome,platform=linux,url=u",
                "browser=chrome,platform=windows,url=u",
                "browser=safari,platform=linux",
                "browser=safari,platform=windows",
                "platform=mac",
            ]
        );
    }

    fn rendered(combos: &[Params]) -> Vec<String> {
        combos
            .iter()
            .map(|c| {
                c.iter()
                    .map(|(k, v)| match v {
                        Param::Known(Value::String(s)) => format!("{k}={s}"),
                        other => format!("{k}={other:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    }

    /// Includes as pkg/apis/pipeline/v1/matrix_types.go has them: `overwriteCombinations` touches
    /// only the matrix's own combinations, `addNewCombinations` appends an include unless some
    /// combination already holds one of its values, and the TaskRuns are `CountCombinations()` many,
    /// the i-th running the i-th combination or, past the end, none (pipelinerun.go
    /// `createTaskRuns`).
    #[test]
    fn includes_follow_tektons_fan_out_and_count() {
        let cases = [
            // An appended include is not overwritten by a later include that matches everything.
            (
                json!({"params": [{"name": "p", "value": ["a"]}], "include": [
                    {"params": [{"name": "p", "value": "b"}, {"name": "tag", "value": "1"}]},
                    {"params": [{"name": "extra", "value": "z"}]}
                ]}),
                vec!["extra=z,p=a", "p=b,tag=1"],
            ),
            // Matches no combination, but shares `p=a` with one: not appended, yet counted (its
            // first matrix param's value is new), so one TaskRun runs without matrix params.
            (
                json!({"params": [{"name": "p", "value": ["a", "b"]}, {"name": "r", "value": ["x", "y"]}],
                       "include": [{"params": [{"name": "r", "value": "z"}, {"name": "p", "value": "a"}]}]}),
                vec!["p=a,r=x", "p=b,r=x", "p=a,r=y", "p=b,r=y", ""],
            ),
            // Two new matrix values in one include count twice; a repeated include is appended once.
            (
                json!({"params": [{"name": "p", "value": ["a"]}, {"name": "r", "value": ["x"]}],
                       "include": [{"params": [{"name": "p", "value": "b"}, {"name": "r", "value": "y"}]}]}),
                vec!["p=a,r=x", "p=b,r=y", ""],
            ),
            (
                json!({"params": [{"name": "p", "value": ["a"]}], "include": [
                    {"params": [{"name": "p", "value": "b"}]},
                    {"params": [{"name": "p", "value": "b"}]}
                ]}),
                vec!["p=a", "p=b", ""],
            ),
        ];
        for (matrix, want) in cases {
            let combos = matrix_combinations(Some(&matrix), &Params::new(), "m").unwrap();
            assert_eq!(rendered(&combos), want, "{matrix}");
        }
    }

    /// The limit is on TaskRuns (`CountCombinations`, as Tekton's `validateCombinationsCount`),
    /// so includes that only add params are allowed in any number, and cost linear time.
    #[test]
    fn includes_are_bounded_by_the_task_runs_they_add() {
        let adding: Vec<Value> = (0..20_000)
            .map(|i| json!({"params": [{"name": "tag", "value": format!("{i}")}]}))
            .collect();
        let matrix = json!({"params": [{"name": "p", "value": ["a", "b"]}], "include": adding});
        // (Its cost is linear because appending stops at the TaskRun count; that is for the
        // benchmarks to show, not a timed assertion here.)
        let combos = matrix_combinations(Some(&matrix), &Params::new(), "m").unwrap();
        assert_eq!(rendered(&combos), ["p=a,tag=0", "p=b,tag=0"]);
        let new_values: Vec<Value> = (0..300)
            .map(|i| json!({"params": [{"name": "p", "value": format!("n{i}")}]}))
            .collect();
        let matrix = json!({"params": [{"name": "p", "value": ["a"]}], "include": new_values});
        assert!(matrix_combinations(Some(&matrix), &Params::new(), "m").is_err());
        let only: Vec<Value> = (0..257).map(|_| json!({"params": []})).collect();
        assert!(matrix_combinations(Some(&json!({"include": only})), &Params::new(), "m").is_err());
    }

    #[test]
    fn include_only_matrix_makes_one_combination_per_entry() {
        let matrix = json!({"include": [
            {"name": "a", "params": [{"name": "ARCH", "value": "amd64"}]},
            {"name": "b", "params": [{"name": "ARCH", "value": "arm64"}]}
        ]});
        let combos = matrix_combinations(Some(&matrix), &Params::new(), "m").unwrap();
        assert_eq!(combos.len(), 2);
        assert_eq!(combos[1]["ARCH"], Param::Known(json!("arm64")));
        assert_eq!(
            matrix_combinations(None, &Params::new(), "m").unwrap(),
            vec![Params::new()]
        );
        assert!(matrix_combinations(Some(&json!("x")), &Params::new(), "m").is_err());
        let empty = json!({"params": [{"name": "v", "value": []}]});
        assert!(
            matrix_combinations(Some(&empty), &Params::new(), "m")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn declared_defaults_and_passed_values() {
        let decl =
            json!([{"name": "a", "default": "x"}, {"name": "b"}, {"name": "n", "default": 1}]);
        let d = declared_defaults(Some(&decl), &Params::new(), "p").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d["n"], Param::Known(json!("1")));
        assert_eq!(declared_names(Some(&decl), "p").unwrap(), ["a", "b", "n"]);
        let given = json!([{"name": "b", "value": "$(params.a)-y"}]);
        let p = passed(Some(&given), &d, "p").unwrap();
        assert_eq!(p["b"], Param::Known(json!("x-y")));
        assert!(passed(Some(&json!({"a": 1})), &d, "p").is_err());
        assert!(passed(Some(&json!([{"value": 1}])), &d, "p").is_err());
    }

    /// Defaults naming other params (Tekton v0.68+ for Tasks and StepActions, v1.9+ for
    /// Pipelines; docs/stepactions.md "Parameter Substitution Precedence").
    #[test]
    fn defaults_that_name_other_params_are_resolved() {
        let decl = json!([
            {"name": "url", "default": "$(params.registry)/$(params.repo):$(params.tag)"},
            {"name": "registry", "default": "$(params.base)/org"},
            {"name": "base", "default": "quay.io"},
            {"name": "repo", "default": "tool"},
            {"name": "tag", "default": "1"},
            {"name": "args", "type": "array", "default": ["--image=$(params.url)"]},
            {"name": "cfg", "type": "object", "default": {"image": "$(params.url)"}},
            {"name": "later", "default": "$(tasks.a.results.digest)"},
            {"name": "loop-a", "default": "$(params.loop-b)"},
            {"name": "loop-b", "default": "$(params.loop-a)"},
            {"name": "ghost", "default": "$(params.nowhere)"}
        ]);
        let d = declared_defaults(Some(&decl), &Params::new(), "p").unwrap();
        assert_eq!(d["url"], Param::Known(json!("quay.io/org/tool:1")));
        assert_eq!(
            d["args"],
            Param::Known(json!(["--image=quay.io/org/tool:1"]))
        );
        assert_eq!(
            d["cfg"],
            Param::Known(json!({"image": "quay.io/org/tool:1"}))
        );
        assert_eq!(
            d["later"],
            Param::Unknown("$(tasks.a.results.digest)".into())
        );
        assert!(
            matches!(d["loop-a"], Param::Unknown(_)),
            "{:?}",
            d["loop-a"]
        );
        assert_eq!(d["ghost"], Param::Unknown("$(params.nowhere)".into()));
        // What the resource was given is seen first (Pipelines, StepActions).
        let given = scope(&[("repo", json!("app")), ("tag", json!("2"))]);
        let d = declared_defaults(Some(&decl), &given, "p").unwrap();
        assert_eq!(d["url"], Param::Known(json!("quay.io/org/app:2")));
    }

    #[test]
    fn a_chain_longer_than_tektons_depth_stays_unknown() {
        let mut decl = vec![json!({"name": "p0", "default": "img"})];
        for i in 1..=MAX_REFERENCE_DEPTH + 2 {
            decl.push(json!({"name": format!("p{i}"), "default": format!("$(params.p{})", i - 1)}));
        }
        // Listed last first, so every round resolves one link only.
        decl.reverse();
        let d = declared_defaults(Some(&Value::Array(decl)), &Params::new(), "p").unwrap();
        assert_eq!(d["p1"], Param::Known(json!("img")));
        assert!(matches!(
            d[&format!("p{}", MAX_REFERENCE_DEPTH + 2)],
            Param::Unknown(_)
        ));
    }

    /// docs/tasks.md "Specifying Parameters": an object given some keys takes the rest from its
    /// default.
    #[test]
    fn partly_given_objects_take_missing_keys_from_the_default() {
        let defaults = scope(&[(
            "img",
            json!({"registry": "quay.io", "name": "tool", "tag": "1"}),
        )]);
        let given = scope(&[("img", json!({"tag": "2"})), ("other", json!("x"))]);
        let merged = overlay_objects(&defaults, &given);
        assert_eq!(
            merged["img"],
            Param::Known(json!({"registry": "quay.io", "name": "tool", "tag": "2"}))
        );
        assert_eq!(merged["other"], Param::Known(json!("x")));
        // A string over an object default replaces it (Tekton rejects the type mismatch).
        let replaced = overlay_objects(&defaults, &scope(&[("img", json!("plain"))]));
        assert_eq!(replaced["img"], Param::Known(json!("plain")));
    }

    #[test]
    fn known_context_variables_are_substituted_and_cannot_be_shadowed() {
        let mut s = scope(&[("context.pipelineRun.name", json!("param-not-context"))]);
        assert_eq!(
            substitute("$(context.pipelineRun.name)", &s),
            Err("$(context.pipelineRun.name)".into())
        );
        s.insert(
            context_key("context.pipelineRun.name"),
            Param::Known(json!("nightly")),
        );
        assert_eq!(
            substitute(
                "r/$(context.pipelineRun.name):$( context.pipelineRun.name )",
                &s
            )
            .as_deref(),
            Ok("r/nightly:nightly")
        );
        assert_eq!(
            substitute("$(params[\"context.pipelineRun.name\"])", &s).as_deref(),
            Ok("param-not-context")
        );
        assert_eq!(
            substitute("$(context.pipelineRun.uid)", &s),
            Err("$(context.pipelineRun.uid)".into())
        );
    }

    /// Hostile input: references that double at every link of a default chain, and a list of
    /// params each naming a large one, stay within the byte bounds as unknown values.
    #[test]
    fn multiplying_references_stay_within_the_byte_bounds() {
        let mut decl = vec![json!({"name": "p0", "default": "x".repeat(1000)})];
        for i in 1..=MAX_REFERENCE_DEPTH {
            let prev = format!("$(params.p{})", i - 1);
            decl.push(json!({"name": format!("p{i}"), "default": prev.repeat(4)}));
        }
        let d = declared_defaults(Some(&Value::Array(decl)), &Params::new(), "p").unwrap();
        assert_eq!(d["p1"], Param::Known(json!("x".repeat(4000))));
        // p3 would be 64 000 bytes; what builds on it stays unknown too.
        let p3 = &d["p3"];
        assert!(
            matches!(p3, Param::Unknown(e) if e.contains("over 16 KiB")),
            "{p3:?}"
        );
        assert!(matches!(
            &d[&format!("p{MAX_REFERENCE_DEPTH}")],
            Param::Unknown(_)
        ));
        for value in d.values() {
            if let Param::Known(v) = value {
                assert!(size(v) <= MAX_VALUE_BYTES);
            }
        }
        let arrays = scope(&[("a", json!(vec!["y".repeat(1000); 10]))]);
        let spliced = json!(vec!["$(params.a[*])"; 10]);
        assert!(matches!(
            substitute_value(&spliced, &arrays, "v").unwrap(),
            Param::Unknown(_)
        ));
        let big = scope(&[("big", json!("z".repeat(MAX_VALUE_BYTES)))]);
        let many: Vec<Value> = (0..100)
            .map(|i| json!({"name": format!("n{i}"), "value": "$(params.big)"}))
            .collect();
        let given = passed(Some(&Value::Array(many)), &big, "params").unwrap();
        let known: usize = given
            .values()
            .map(|p| match p {
                Param::Known(v) => size(v),
                Param::Unknown(_) => 0,
            })
            .sum();
        assert!(known <= MAX_SCOPE_BYTES, "{known}");
        assert!(
            matches!(lookup(&given, "n99"), Some(Param::Unknown(e)) if e.contains("params over"))
        );
    }
    /// 100,000 params with empty values held no value bytes, so the budget never stopped them,
    /// and every task run cloned the whole scope. Names count too; past the budget one entry
    /// stands for every name not kept, and shadows what lies beneath it (a default must not show
    /// through where the run may have given a value).
    #[test]
    fn param_names_count_against_the_scope_budget() {
        let many: Vec<Value> = (0..100_000)
            .map(|i| json!({"name": format!("p{i}"), "value": ""}))
            .collect();
        let given = passed(Some(&Value::Array(many)), &Params::new(), "spec.params").unwrap();
        assert!(
            given.len() <= MAX_SCOPE_BYTES / ENTRY_BYTES + 1,
            "{}",
            given.len()
        );
        let late = substitute("img:$(params.p99999)", &given).unwrap_err();
        assert!(late.contains("params over"), "{late}");
        let defaults = scope(&[("p99999", json!("alpine"))]);
        for merged in [
            overlay(&defaults, &given),
            overlay_objects(&defaults, &given),
        ] {
            assert!(substitute("$(params.p99999)", &merged).is_err());
            assert_eq!(substitute("$(params.p0)", &merged).as_deref(), Ok(""));
        }
    }
}
