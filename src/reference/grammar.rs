//! The distribution reference grammar (`[domain[:port]/]path[:tag][@digest]`), matched by hand.
//!
//! oci-spec matches it with one `regex` whose compilation costs 30–40 ms of CPU on first use (the
//! pattern's Unicode `\w`), which was most of `archgate check`'s time before its first request,
//! and whose backtracker then costs microseconds per reference. This accepts what that pattern
//! accepts (distribution's `reference/regexp.go`, as oci-spec 0.10 writes it) and builds the same
//! [`Reference`] (oci-spec's `split_domain` rules for Docker Hub), with one difference: a tag's
//! `\w` is ASCII, as in distribution's Go regexp (RE2's `\w` is `[0-9A-Za-z_]`) and so in
//! containerd, where oci-spec's Rust `regex` reads it as Unicode (`nginx:tëst` is a reference
//! the runtime refuses; oci-spec took it). Checked against oci-spec's parser by
//! `agrees_with_oci_spec` below and the `reference_platform` fuzz target.

use oci_client::Reference;

/// What oci-spec's `ParseError` says, in the same words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Empty,
    Format,
    NameTooLong,
    DigestFormat,
    DigestLength,
    DigestAlgorithm,
}

impl Invalid {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Empty => "repository name must have at least one component",
            Self::Format => "invalid reference format",
            Self::NameTooLong => "repository name must not be more than 255 characters",
            Self::DigestFormat => "invalid checksum digest format",
            Self::DigestLength => "invalid checksum digest length",
            Self::DigestAlgorithm => "unsupported digest algorithm",
        }
    }
}

const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// Parses `text` as oci-spec's `Reference::try_from` does.
pub fn parse(text: &str) -> Result<Reference, Invalid> {
    if text.is_empty() {
        return Err(Invalid::Empty);
    }
    // A digest is everything after the first `@` (neither name nor tag may hold one).
    let (rest, digest) = match text.split_once('@') {
        Some((rest, digest)) if is_digest(digest) => (rest, Some(digest)),
        Some(_) => return Err(Invalid::Format),
        None => (text, None),
    };
    // A tag follows the last `:` that comes after the last `/` (an earlier `:` is a port).
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if rest[colon..].find('/').is_none() => {
            (&rest[..colon], Some(&rest[colon + 1..]))
        }
        _ => (rest, None),
    };
    if tag.is_some_and(|t| !is_tag(t)) || !is_name(name) {
        return Err(Invalid::Format);
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(Invalid::NameTooLong);
    }
    if let Some(digest) = digest {
        check_digest_length(digest)?;
    }
    let tag = tag.map(str::to_string);
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag, digest.to_string())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.to_string()),
        (tag, None) => {
            Reference::with_tag(registry, repository, tag.unwrap_or_else(|| "latest".into()))
        }
    })
}

/// `[domain[:port]/]component(/component)*`: the first segment may be a domain; every other
/// one is a path component.
fn is_name(name: &str) -> bool {
    let mut segments = name.split('/');
    let first = segments.next().unwrap_or_default();
    let rest_ok = segments.clone().all(is_path_component);
    let has_rest = name.contains('/');
    rest_ok && (is_path_component(first) || (has_rest && is_domain(first)))
}

/// `[a-z0-9]+((\.|_|__|-+)?[a-z0-9]+)*`.
fn is_path_component(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(|&b| alnum(b)) || !bytes.last().is_some_and(|&b| alnum(b)) {
        return false;
    }
    let mut separator: &[u8] = &[];
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if alnum(b) {
            if !separator.is_empty() {
                let ok = matches!(separator, b"." | b"_" | b"__")
                    || separator.iter().all(|&c| c == b'-');
                if !ok {
                    return false;
                }
                separator = &[];
            }
            start = i + 1;
        } else if matches!(b, b'.' | b'_' | b'-') {
            separator = &bytes[start..=i];
        } else {
            return false;
        }
    }
    true
}

/// `label(.label)*(:[0-9]+)?`, a label being `[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[\w][\w.-]{0,127}`, `\w` being ASCII `[0-9A-Za-z_]` as in distribution's Go grammar.
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    bytes.first().is_some_and(|&b| word(b))
        && bytes.len() <= TAG_MAX
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}`.
fn is_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    };
    algorithm.split(['-', '_', '+', '.']).all(component_ok)
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_digest_length(digest: &str) -> Result<(), Invalid> {
    let (algorithm, hex) = digest.split_once(':').ok_or(Invalid::DigestFormat)?;
    let expected = digest_hex_length(algorithm).ok_or(Invalid::DigestAlgorithm)?;
    if hex.len() == expected {
        Ok(())
    } else {
        Err(Invalid::DigestLength)
    }
}

/// Hex digits of a digest in `algorithm`, for the algorithms registries use (distribution's
/// `digest` package registers these three); `None` for any other.
pub fn digest_hex_length(algorithm: &str) -> Option<usize> {
    match algorithm {
        "sha256" => Some(64),
        "sha384" => Some(96),
        "sha512" => Some(128),
        _ => None,
    }
}

/// Docker Hub's defaults, as distribution's `normalize.go` (and oci-spec's `split_domain`).
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => {
            (left.to_string(), right.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".into();
    }
    if domain == "docker.io" && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:89102e348749bb17a6a651a4b2a17420e1a66d2a44a675b981973d49a5af3a5e";

    /// Every input, valid or not, parses as oci-spec's regex-based parser parses it, but for
    /// non-ASCII tags, which the runtime refuses and oci-spec took.
    #[test]
    fn agrees_with_oci_spec() {
        for unicode_tag in ["a:tëst", "a:名前"] {
            assert!(Reference::try_from(unicode_tag).is_ok(), "{unicode_tag}");
            assert_eq!(parse(unicode_tag), Err(Invalid::Format), "{unicode_tag}");
        }
        let long = "a".repeat(300);
        let long_tag = format!("nginx:{}", "t".repeat(129));
        let at_max_tag = format!("nginx:{}", "t".repeat(128));
        let inputs = [
            "nginx",
            "nginx:1.27",
            "library/nginx",
            "docker.io/nginx",
            "index.docker.io/nginx:1",
            "docker.io/library/nginx:latest",
            "10.34.0.202:5000/cerebral/ai-base:cuda",
            "10.34.0.202:5000/cerebral/ai-base",
            "localhost/app",
            "localhost:5000/app:v1",
            "localhost:5000",
            "host:5000",
            "registry.example/a/b/c:tag",
            "Registry.Example:443/team/app",
            "Foo/bar",
            "foo/Bar",
            "UPPER",
            "a__b",
            "a___b",
            "a--b",
            "a-b",
            "a.b",
            "a..b",
            "a._b",
            "-a",
            "a-",
            "a/",
            "/a",
            "a//b",
            "a:b/c",
            "a:",
            "a:-t",
            "a:_t",
            "a:t.-_",
            "a:t@",
            "nn:³",
            "app@",
            "app@sha256:abc",
            "Not A Reference!",
            "host-.example/a",
            "-host.example/a",
            "host..example/a",
            "host.example:/a",
            "host.example:12a/a",
            "[::1]:5000/a",
            "café/a",
            "ghcr.io/Org/app",
            "",
            " nginx",
            "nginx ",
            "nginx\n",
            &long,
            &long_tag,
            &at_max_tag,
        ];
        let with_digests: Vec<String> = inputs
            .iter()
            .filter(|i| !i.is_empty())
            .flat_map(|i| {
                [
                    format!("{i}@{SHA}"),
                    format!("{i}@sha512:{}", "a".repeat(64)),
                    format!("{i}@md5:{}", "a".repeat(32)),
                    format!("{i}@sha256:{}", "A".repeat(64)),
                    format!("{i}@sha256+b64:{}", "a".repeat(64)),
                    format!("{i}@sha384:{}", "0".repeat(96)),
                    format!("{i}@sha256:{}", "g".repeat(64)),
                ]
            })
            .collect();
        for input in inputs
            .iter()
            .copied()
            .chain(with_digests.iter().map(String::as_str))
        {
            let theirs = Reference::try_from(input).map_err(|e| e.to_string());
            let ours = parse(input).map_err(|e| e.reason().to_string());
            assert_eq!(ours, theirs, "{input:?}");
        }
    }
}
