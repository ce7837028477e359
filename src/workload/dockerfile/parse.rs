//! The Dockerfile's instructions, as BuildKit's frontend reads them.
//!
//! Hand-written on purpose. Of the Rust crates, `dockerfile-parser` 0.9 (pest grammar) knows no
//! heredocs and no `# escape=` directive; `dockerfile-parser-rs` 3.4 only knows the literal
//! `<<EOF` heredoc, no escape directive and no source line numbers (a finding must name its
//! line); `dockerfile-roast` is a linter binary whose parser comes with a CLI's dependencies
//! (clap, regex, hcl-rs, ...). What archgate needs is small: instructions with their first line,
//! builder flags and arguments, following BuildKit's `frontend/dockerfile/parser` (`parser.go`:
//! `Parse`, `trimContinuationCharacter`, `heredocsFromLine`; `directives.go`; `split_command.go`:
//! `extractBuilderFlags`; `line_parsers.go`: `parseWords`). Heredoc bodies are skipped, never
//! kept: archgate only needs to not mistake them for instructions.

use super::DockerfileError;

/// A Dockerfile larger than this is refused: real ones are a few KiB.
pub const MAX_BYTES: usize = 1024 * 1024;
/// Instructions past this are refused (a bound on work, far above real files).
pub const MAX_INSTRUCTIONS: usize = 10_000;

/// One instruction: `FROM --platform=$BUILDPLATFORM golang:1.23 AS build` on line 3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line the instruction starts on.
    pub line: usize,
    /// Upper-cased keyword: `FROM`, `ARG`, `COPY`, `RUN`, ...
    pub keyword: String,
    /// Builder flags with quotes and escapes resolved: `--platform=$BUILDPLATFORM`.
    pub flags: Vec<String>,
    /// Everything after the flags, continuation lines joined.
    pub rest: String,
}

/// The parsed file: instructions and the escape token in force (`\` or `` ` ``).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub instructions: Vec<Instruction>,
    pub escape: char,
}

/// Reads a Dockerfile the way BuildKit does.
pub fn parse(text: &str) -> Result<Parsed, DockerfileError> {
    if text.len() > MAX_BYTES {
        return Err(DockerfileError::TooLarge { limit: MAX_BYTES });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let escape = directives(&lines)?;
    let mut instructions = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = i + 1;
        let first = trim_comment(trim_newline(lines[i]).trim_start());
        i += 1;
        let (mut text, mut ended) = trim_continuation(first, escape);
        if ended && text.is_empty() {
            continue;
        }
        let mut joined = text.to_string();
        while !ended && i < lines.len() {
            let raw = trim_newline(lines[i]);
            i += 1;
            // Comment and empty lines inside a continuation are dropped (BuildKit warns about
            // the empty ones).
            if raw.trim_start().starts_with('#') || raw.trim().is_empty() {
                continue;
            }
            (text, ended) = trim_continuation(raw, escape);
            joined.push_str(text);
        }
        let mut instruction = split_command(&joined, start, escape)?;
        if can_hold_heredoc(&instruction) {
            for heredoc in heredocs(&instruction.rest) {
                i = skip_heredoc(&lines, i, &heredoc).ok_or_else(|| DockerfileError::Syntax {
                    line: start,
                    reason: format!("unterminated heredoc <<{}", heredoc.name),
                })?;
            }
        }
        instruction.keyword.make_ascii_uppercase();
        instructions.push(instruction);
        if instructions.len() > MAX_INSTRUCTIONS {
            return Err(DockerfileError::TooMany {
                what: "instructions",
                limit: MAX_INSTRUCTIONS,
            });
        }
    }
    Ok(Parsed {
        instructions,
        escape,
    })
}

/// Parser directives (`# syntax=`, `# escape=`, `# check=`): only in the leading comment lines,
/// each at most once; the first line that is not one ends them (BuildKit's `DirectiveParser`).
fn directives(lines: &[&str]) -> Result<char, DockerfileError> {
    let mut escape = '\\';
    let mut seen: Vec<String> = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some(body) = trim_newline(line).trim_start().strip_prefix('#') else {
            break;
        };
        let Some((name, value)) = body.trim_start().split_once('=') else {
            break;
        };
        let name = name.trim_end();
        let value = value.trim();
        let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric());
        let name = name.to_ascii_lowercase();
        if !valid_name || value.is_empty() || !["syntax", "escape", "check"].contains(&&*name) {
            break;
        }
        if seen.contains(&name) {
            return Err(DockerfileError::Syntax {
                line: n + 1,
                reason: format!("only one {name} parser directive can be used"),
            });
        }
        if name == "escape" {
            escape = match value {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(DockerfileError::Syntax {
                        line: n + 1,
                        reason: format!("invalid escape token {other:?}: use ` or \\"),
                    });
                }
            };
        }
        seen.push(name);
    }
    Ok(escape)
}

fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

fn trim_comment(line: &str) -> &str {
    if line.starts_with('#') { "" } else { line }
}

/// A line ending in the escape token (and spaces or tabs) continues on the next one; the token
/// and what follows it are removed. Returns the text and whether the instruction ends here.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let body = line.trim_end_matches([' ', '\t']);
    match body.strip_suffix(escape) {
        // `\\` at the end is an escaped escape, not a continuation (BuildKit's regex needs a
        // character other than the escape token before it).
        Some(before) if !before.ends_with(escape) => (before, false),
        _ => (line, true),
    }
}

/// The keyword, then builder flags (`--name=value` words at the start), then the rest.
fn split_command(line: &str, start: usize, escape: char) -> Result<Instruction, DockerfileError> {
    let line = line.trim();
    let (keyword, mut rest) = match line.find(char::is_whitespace) {
        Some(at) => (&line[..at], line[at..].trim_start()),
        None => (line, ""),
    };
    let mut flags = Vec::new();
    while rest.starts_with("--") {
        let (word, after) = shell_word(rest, escape, true);
        rest = after.trim_start();
        if word == "--" {
            break;
        }
        flags.push(word);
    }
    if keyword.is_empty() {
        return Err(DockerfileError::Syntax {
            line: start,
            reason: "empty instruction".into(),
        });
    }
    Ok(Instruction {
        line: start,
        keyword: keyword.to_string(),
        flags,
        rest: rest.trim().to_string(),
    })
}

/// One whitespace-delimited word from the start of `text`. With `unquote`, quotes are removed
/// and the escape token escapes the next character (builder flags); without, the word is kept
/// raw (BuildKit's `parseWords`, which leaves quote removal to variable expansion).
pub fn shell_word(text: &str, escape: char, unquote: bool) -> (String, &str) {
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match quote {
            None if c.is_whitespace() => return (word, &text[at..]),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                if !unquote {
                    word.push(c);
                }
            }
            Some(q) if c == q => {
                quote = None;
                if !unquote {
                    word.push(c);
                }
            }
            // Inside single quotes nothing is escaped.
            _ if c == escape && quote != Some('\'') => {
                if !unquote {
                    word.push(c);
                }
                if let Some((_, next)) = chars.next() {
                    word.push(next);
                }
            }
            _ => word.push(c),
        }
    }
    (word, "")
}

/// Every raw word of `text` (BuildKit's `parseWords`).
pub fn words(text: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let (word, after) = shell_word(rest, escape, false);
        out.push(word);
        rest = after.trim_start();
    }
    out
}

/// Heredocs attach to RUN, COPY and ADD in shell form (and ONBUILD of those).
fn can_hold_heredoc(instruction: &Instruction) -> bool {
    let (keyword, rest) = if instruction.keyword.eq_ignore_ascii_case("ONBUILD") {
        let (inner, rest) = instruction
            .rest
            .split_once(char::is_whitespace)
            .unwrap_or((&instruction.rest, ""));
        (inner.to_string(), rest.trim_start())
    } else {
        (instruction.keyword.clone(), instruction.rest.as_str())
    };
    ["RUN", "COPY", "ADD"].contains(&&*keyword.to_ascii_uppercase())
        && !is_json_form(rest)
        && rest.contains("<<")
}

fn is_json_form(rest: &str) -> bool {
    rest.starts_with('[') && serde_json::from_str::<Vec<String>>(rest).is_ok()
}

#[derive(Debug, PartialEq, Eq)]
struct Heredoc {
    name: String,
    /// `<<-`: leading tabs are removed, also before the terminator.
    chomp: bool,
}

/// Heredoc openers among the instruction's words: `<<EOF`, `<<-EOF`, `<<'EOF'`, `3<<"X"`, `<< EOF`
/// (BuildKit's `reHeredoc`: `^(\d*)<<(-?)\s*([^<]*)$` on each raw word).
fn heredocs(rest: &str) -> Vec<Heredoc> {
    let mut raw = words(rest, '\\');
    // `<< EOF`: BuildKit's lexer keeps the space in the word.
    let mut i = 0;
    while i + 1 < raw.len() {
        if raw[i].trim_start_matches(|c: char| c.is_ascii_digit()) == "<<"
            || raw[i].trim_start_matches(|c: char| c.is_ascii_digit()) == "<<-"
        {
            let next = raw.remove(i + 1);
            raw[i].push_str(&next);
        }
        i += 1;
    }
    raw.iter()
        .filter_map(|word| {
            let after = word
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .strip_prefix("<<")?;
            let (chomp, name) = match after.strip_prefix('-') {
                Some(name) => (true, name),
                None => (false, after),
            };
            if name.is_empty() || name.contains('<') {
                return None;
            }
            let name: String = name.chars().filter(|c| *c != '\'' && *c != '"').collect();
            (!name.is_empty()).then_some(Heredoc { name, chomp })
        })
        .collect()
}

/// Skips the body of one heredoc starting at line index `from`; returns the index after its
/// terminator, or `None` when the file ends first.
fn skip_heredoc(lines: &[&str], from: usize, heredoc: &Heredoc) -> Option<usize> {
    (from..lines.len())
        .find(|&i| {
            let line = trim_newline(lines[i]);
            let line = if heredoc.chomp {
                line.trim_start_matches('\t')
            } else {
                line
            };
            line == heredoc.name
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Vec<(usize, String, Vec<String>, String)> {
        parse(text)
            .unwrap()
            .instructions
            .into_iter()
            .map(|i| (i.line, i.keyword, i.flags, i.rest))
            .collect()
    }

    fn lines_and_keywords(text: &str) -> Vec<(usize, String)> {
        parsed(text)
            .into_iter()
            .map(|(l, k, _, _)| (l, k))
            .collect()
    }

    #[test]
    fn continuations_comments_and_blank_lines_keep_the_first_line_number() {
        let text = "# a comment\n\nARG A=1\nfrom --platform=$BUILDPLATFORM \\\n  # inside\n\n  golang:1.23 \\\n  AS build\nRUN echo \\\\\nCOPY . .\n";
        let got = parsed(text);
        assert_eq!(got[0], (3, "ARG".into(), vec![], "A=1".into()));
        assert_eq!(
            got[1],
            (
                4,
                "FROM".into(),
                vec!["--platform=$BUILDPLATFORM".into()],
                "golang:1.23   AS build".into()
            )
        );
        // An escaped escape at the end is not a continuation.
        assert_eq!(got[2].0, 9);
        assert_eq!(got[3].0, 10);
    }

    #[test]
    fn escape_directive_switches_to_backtick() {
        let text = "# escape=`\nFROM mcr.microsoft.com/windows/servercore:ltsc2022 `\n  AS base\nRUN dir c:\\\nCOPY . .\n";
        let p = parse(text).unwrap();
        assert_eq!(p.escape, '`');
        let got: Vec<_> = p.instructions.iter().map(|i| (i.line, &*i.rest)).collect();
        assert_eq!(
            got,
            [
                (2, "mcr.microsoft.com/windows/servercore:ltsc2022   AS base"),
                (4, "dir c:\\"),
                (5, ". ."),
            ]
        );
    }

    #[test]
    fn directives_only_at_the_top_and_once() {
        // After an instruction `# escape=` is a comment.
        let p = parse("FROM a\n# escape=`\nRUN x \\\n y\n").unwrap();
        assert_eq!(p.escape, '\\');
        assert_eq!(p.instructions.len(), 2);
        assert!(matches!(
            parse("# escape=`\n# escape=\\\nFROM a\n"),
            Err(DockerfileError::Syntax { line: 2, .. })
        ));
        assert!(parse("# escape=x\nFROM a\n").is_err());
    }

    #[test]
    fn heredoc_bodies_are_not_instructions() {
        let text = "FROM alpine:3.20\nRUN <<EOF\nFROM evil:1\necho hi\nEOF\nCOPY <<-'CONF' /etc/app.conf\n\tFROM x\n\tCONF\nRUN <<ONE cat >/a && 3<<\"TWO\" cat >/b\nFROM no\nONE\nFROM no\nTWO\nRUN python3 << PY\nprint('FROM')\nPY\nRUN [\"echo\", \"<<EOF\"]\nFROM final:1\n";
        assert_eq!(
            lines_and_keywords(text),
            [
                (1, "FROM".to_string()),
                (2, "RUN".into()),
                (6, "COPY".into()),
                (9, "RUN".into()),
                (14, "RUN".into()),
                (17, "RUN".into()),
                (18, "FROM".into()),
            ]
        );
        assert!(matches!(
            parse("FROM a\nRUN <<EOF\necho\n"),
            Err(DockerfileError::Syntax { line: 2, .. })
        ));
    }

    #[test]
    fn flags_lose_their_quotes_and_words_keep_them() {
        let got = parsed("COPY --from=\"build\" --chown=1:1 a b\n");
        assert_eq!(got[0].2, ["--from=build", "--chown=1:1"]);
        assert_eq!(got[0].3, "a b");
        assert_eq!(
            words(r#"A="x y" B='$C' D=\"e"#, '\\'),
            [r#"A="x y""#, "B='$C'", r#"D=\"e"#]
        );
    }

    #[test]
    fn crlf_and_bom() {
        let got = lines_and_keywords("\u{feff}FROM a \\\r\n  AS b\r\nRUN x\r\n");
        assert_eq!(got, [(1, "FROM".to_string()), (3, "RUN".into())]);
    }

    #[test]
    fn size_is_bounded() {
        let big = "#".repeat(MAX_BYTES + 1);
        assert!(matches!(parse(&big), Err(DockerfileError::TooLarge { .. })));
    }
}
