//! Variable expansion in one word (`${REGISTRY}/ai-base:${TAG:-latest}`), following BuildKit's
//! `frontend/dockerfile/shell/lex.go` (`ProcessWord`): quotes are removed, the escape token
//! escapes, an unset variable expands to nothing. Supported: `$V`, `${V}`, `${V:-w}`, `${V-w}`,
//! `${V:+w}`, `${V+w}`, `${V:?w}`, `${V?w}`, and `${V#p}`, `${V##p}`, `${V%p}`, `${V%%p}` with
//! literal patterns or `*`; anything else is an error, never a silent guess.

use std::collections::{BTreeMap, BTreeSet};

/// An expanded word is refused past this size (`ARG A=$B$B` chains double at each step).
pub const MAX_WORD_BYTES: usize = 16 * 1024;
/// `${A:-${B:-...}}` nests no deeper than this (the lexer recurses once per level).
const MAX_DEPTH: usize = 32;
/// `${V#pattern}` tries every cut of the value: refused for longer values (real ones are tags).
const MAX_TRIM_BYTES: usize = 1024;

/// The result and the variables that were used without a value.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expanded {
    pub text: String,
    pub unset: BTreeSet<String>,
}

/// Expands `word` with `env`; `escape` is the Dockerfile's escape token.
pub fn expand(
    word: &str,
    env: &BTreeMap<String, String>,
    escape: char,
) -> Result<Expanded, String> {
    let mut lexer = Lexer {
        chars: word.chars().collect(),
        at: 0,
        env,
        escape,
        unset: BTreeSet::new(),
        depth: 0,
    };
    let text = lexer.until(None)?;
    Ok(Expanded {
        text,
        unset: lexer.unset,
    })
}

struct Lexer<'a> {
    chars: Vec<char>,
    at: usize,
    env: &'a BTreeMap<String, String>,
    escape: char,
    unset: BTreeSet<String>,
    depth: usize,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.at += usize::from(c.is_some());
        c
    }

    fn push(out: &mut String, s: &str) -> Result<(), String> {
        if out.len() + s.len() > MAX_WORD_BYTES {
            return Err(format!("expands to more than {MAX_WORD_BYTES} bytes"));
        }
        out.push_str(s);
        Ok(())
    }

    /// Reads up to `stop` (consumed) or the end of the word.
    fn until(&mut self, stop: Option<char>) -> Result<String, String> {
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return match stop {
                    Some(s) => Err(format!("missing '{s}'")),
                    None => Ok(out),
                };
            };
            if Some(c) == stop {
                self.next();
                return Ok(out);
            }
            let piece = match c {
                '$' => self.dollar()?,
                '\'' => self.single_quoted()?,
                '"' => self.double_quoted()?,
                _ => {
                    self.next();
                    if c == self.escape {
                        self.next().map(String::from).unwrap_or_default()
                    } else {
                        c.to_string()
                    }
                }
            };
            Self::push(&mut out, &piece)?;
        }
    }

    fn single_quoted(&mut self) -> Result<String, String> {
        self.next();
        let mut out = String::new();
        loop {
            match self.next() {
                None => return Err("missing closing single quote".into()),
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, String> {
        self.next();
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err("missing closing double quote".into()),
                Some('"') => {
                    self.next();
                    return Ok(out);
                }
                Some('$') => {
                    let value = self.dollar()?;
                    Self::push(&mut out, &value)?;
                }
                Some(c) => {
                    self.next();
                    // Inside double quotes the escape token only escapes `"`, `$` and itself.
                    if c == self.escape
                        && matches!(self.peek(), Some(n) if n == '"' || n == '$' || n == self.escape)
                    {
                        out.extend(self.next());
                    } else {
                        out.push(c);
                    }
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_alphanumeric() || c == '_' {
                name.push(c);
                self.next();
            } else {
                break;
            }
        }
        name
    }

    /// A plain `$NAME`: remembered when it has no value.
    fn get(&mut self, name: &str) -> Option<String> {
        let value = self.env.get(name).cloned();
        if value.is_none() {
            self.unset.insert(name.to_string());
        }
        value
    }

    fn dollar(&mut self) -> Result<String, String> {
        self.depth += 1;
        let result = self.dollar_inner();
        self.depth -= 1;
        result
    }

    fn dollar_inner(&mut self) -> Result<String, String> {
        if self.depth > MAX_DEPTH {
            return Err(format!("${{...}} nested more than {MAX_DEPTH} deep"));
        }
        self.next();
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(self.get(&name).unwrap_or_default());
        }
        self.next();
        let name = self.name();
        if name.is_empty() {
            return Err("bad substitution: ${} needs a variable name".into());
        }
        let op = self.next().ok_or("missing '}'")?;
        if op == '}' {
            return Ok(self.get(&name).unwrap_or_default());
        }
        let null_is_unset = op == ':';
        let op = if null_is_unset {
            self.next().ok_or("missing '}'")?
        } else {
            op
        };
        let word = self.until(Some('}'))?;
        // A modifier says what to do without a value: not worth a warning.
        let value = self.env.get(&name).cloned();
        let absent = match &value {
            None => true,
            Some(v) => null_is_unset && v.is_empty(),
        };
        match op {
            '-' => Ok(if absent {
                word
            } else {
                value.unwrap_or_default()
            }),
            '+' => Ok(if absent { String::new() } else { word }),
            '?' if absent => Err(format!(
                "{name}: {}",
                if word.is_empty() {
                    "is not allowed to be unset or empty"
                } else {
                    &word
                }
            )),
            '?' => Ok(value.unwrap_or_default()),
            '#' | '%' if !null_is_unset => {
                let value = value.unwrap_or_default();
                let (greedy, pattern) = match word.strip_prefix(op) {
                    Some(p) => (true, p),
                    None => (false, word.as_str()),
                };
                trim(&value, pattern, op == '#', greedy)
            }
            other => Err(format!("unsupported modifier {other:?} in ${{{name}...}}")),
        }
    }
}

/// `${V#p}` / `${V%p}` with a pattern that is literal text, possibly with `*` wildcards.
fn trim(value: &str, pattern: &str, prefix: bool, greedy: bool) -> Result<String, String> {
    if value.len() > MAX_TRIM_BYTES {
        return Err(format!(
            "pattern removal on a value over {MAX_TRIM_BYTES} bytes is not supported"
        ));
    }
    if pattern.contains(['?', '[']) {
        return Err(format!(
            "pattern {pattern:?} is not supported (only literal text and *)"
        ));
    }
    // Candidate cut points, shortest match first.
    let cuts: Vec<usize> = if prefix {
        value
            .char_indices()
            .map(|(i, _)| i)
            .chain([value.len()])
            .collect()
    } else {
        let mut v: Vec<usize> = value
            .char_indices()
            .map(|(i, _)| i)
            .chain([value.len()])
            .collect();
        v.reverse();
        v
    };
    let matching = |cut: &usize| {
        let part = if prefix {
            &value[..*cut]
        } else {
            &value[*cut..]
        };
        glob(pattern, part)
    };
    let found = if greedy {
        cuts.iter().rev().find(|c| matching(c))
    } else {
        cuts.iter().find(|c| matching(c))
    };
    Ok(match found {
        Some(&cut) if prefix => value[cut..].to_string(),
        Some(&cut) => value[..cut].to_string(),
        None => value.to_string(),
    })
}

/// `*` matches any run of characters; everything else is literal.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut middle = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match middle.find(part) {
            Some(at) => middle = &middle[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [
            ("REG", "10.0.0.1:5000"),
            ("TAG", "cuda"),
            ("EMPTY", ""),
            ("V", "1.23.4-alpine"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn x(word: &str) -> String {
        expand(word, &env(), '\\').unwrap().text
    }

    #[test]
    fn expansion_table() {
        let cases = [
            (
                "${REG}/cerebral/ai-base:${TAG}",
                "10.0.0.1:5000/cerebral/ai-base:cuda",
            ),
            ("$REG/x:$TAG", "10.0.0.1:5000/x:cuda"),
            ("x:${NOPE:-latest}", "x:latest"),
            ("x:${EMPTY:-latest}", "x:latest"),
            ("x:${EMPTY-latest}", "x:"),
            ("x${TAG:+-gpu}", "x-gpu"),
            ("x${NOPE:+-gpu}", "x"),
            ("\"$REG\"/'$TAG'", "10.0.0.1:5000/$TAG"),
            ("a\\$TAG", "a$TAG"),
            ("golang:${V%-alpine}", "golang:1.23.4"),
            ("golang:${V%%.*}", "golang:1"),
            ("golang:${V#*.}", "golang:23.4-alpine"),
            ("golang:${V##*.}", "golang:4-alpine"),
            ("cost$", "cost$"),
            ("${TAG:-${REG}}", "cuda"),
            ("${NOPE:-${REG}/x}", "10.0.0.1:5000/x"),
        ];
        for (word, want) in cases {
            assert_eq!(x(word), want, "{word}");
        }
    }

    #[test]
    fn unset_variables_are_reported_and_expand_to_nothing() {
        let e = expand("${REGISTRY}/ai:${TAG}${NOPE:-}", &env(), '\\').unwrap();
        assert_eq!(e.text, "/ai:cuda");
        assert_eq!(e.unset.into_iter().collect::<Vec<_>>(), ["REGISTRY"]);
    }

    #[test]
    fn errors_instead_of_guesses() {
        for word in [
            "${}",
            "${TAG",
            "${NOPE:?give a tag}",
            "${TAG/a/b}",
            "'open",
            "${V#[0-9]}",
        ] {
            assert!(expand(word, &env(), '\\').is_err(), "{word}");
        }
        assert_eq!(
            expand("${NOPE:?give a tag}", &env(), '\\').unwrap_err(),
            "NOPE: give a tag"
        );
    }

    #[test]
    fn growth_is_bounded() {
        let mut env = BTreeMap::new();
        env.insert("A".to_string(), "x".repeat(MAX_WORD_BYTES / 2 + 1));
        assert!(expand("$A$A", &env, '\\').is_err());
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!(
            "{}x{}",
            "${N:-".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert!(expand(&deep, &env(), '\\').is_err());
        let fine = format!("{}x{}", "${N:-".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert_eq!(expand(&fine, &env(), '\\').unwrap().text, "x");
        // Far deeper than the bound is still an error, not a stack overflow.
        let hostile = format!("{}x", "${N:-".repeat(200_000));
        assert!(expand(&hostile, &env(), '\\').is_err());
    }

    #[test]
    fn backtick_escape() {
        assert_eq!(expand("a`$TAG", &env(), '`').unwrap().text, "a$TAG");
    }
}
