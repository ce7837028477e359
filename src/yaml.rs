//! YAML as archgate reads it from users' files: never echoed back.
//!
//! serde-saphyr's errors carry, by default, a snippet of the source around the error: lines of
//! the document, on several lines of output. A broken Secret in a `check -f` file would print its
//! password to the CI log, and one finding would no longer be one line. Every YAML archgate reads
//! from a file (manifests, its config file, Tekton bundle layers) goes through here: parsed
//! without snippets, errors said on one line with the line and column.

use serde::de::DeserializeOwned;

/// Options for parsing user YAML: serde-saphyr's defaults (its budget and alias limits bound
/// hostile input) without source snippets in errors.
pub fn options() -> serde_saphyr::Options {
    serde_saphyr::options! { with_snippet: false }
}

/// One YAML document, with [`options`].
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, options())
}

/// The error on one line, with its line and column as in the whole file when the parsed text
/// began at `first_line` of it (1-based). Never any of the source text.
pub fn describe(error: &serde_saphyr::Error, first_line: usize) -> String {
    let options = serde_saphyr::render_options! {
        snippets: serde_saphyr::SnippetMode::Off,
        line_offset: first_line.saturating_sub(1) as u64,
    };
    let text = error.without_snippet().render_with_options(options);
    // Messages are one line; this keeps them so whatever a future serde-saphyr renders.
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_where_but_not_what() {
        let text = "a: 1\nstringData:\n  password: hunter2-TOPSECRET\n  user: [admin\n";
        let error = from_str::<serde_json::Value>(text).unwrap_err();
        let said = describe(&error, 10);
        assert!(!said.contains("hunter2"), "{said}");
        assert!(!said.contains('\n'), "{said}");
        assert!(said.contains("line 13"), "{said}");
    }
}
