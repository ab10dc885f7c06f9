//! etcdctl's transaction format, as `etcdctl txn` reads it from stdin:
//! three parts, each ending with an empty line: the comparisons
//! (`value("k") = "v"`, `mod("k") > "5"`, `create("k") = "0"`,
//! `version("k") != "0"`, `lease("k") = "694d71ddacfda227"`), then the
//! requests done if all hold, then those done otherwise (`put k v`,
//! `get k [end] [--prefix]`, `del k [end] [--prefix]`; words may be
//! double-quoted).

use dengine_client::{CompareOp, Comparison, DeleteOptions, GetOptions, Txn, TxnOp};

/// Splits a line into words: spaces separate, double quotes group (with
/// `\"` and `\\` inside).
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(e) => word.push(e),
                        None => return Err(format!("unfinished escape in {line:?}")),
                    },
                    Some(ch) => word.push(ch),
                    None => return Err(format!("unclosed quote in {line:?}")),
                }
            }
        } else {
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() {
                    break;
                }
                word.push(ch);
                chars.next();
            }
        }
        out.push(word);
    }
    Ok(out)
}

/// One comparison line.
fn comparison(line: &str) -> Result<Comparison, String> {
    let bad = || {
        format!(
            "cannot read the comparison {line:?} (write it like value(\"key\") = \"v\" or \
             mod(\"key\") > \"5\")"
        )
    };
    let open = line.find('(').ok_or_else(bad)?;
    let close = line.rfind(')').filter(|&c| c > open).ok_or_else(bad)?;
    let target = line[..open].trim();
    let key = words(&line[open + 1..close])?
        .into_iter()
        .next()
        .ok_or_else(bad)?;
    let rest = words(&line[close + 1..])?;
    let [op, value] = rest.as_slice() else {
        return Err(bad());
    };
    let op = match op.as_str() {
        "=" | "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        ">" => CompareOp::Greater,
        "<" => CompareOp::Less,
        _ => return Err(bad()),
    };
    let number = |v: &str| -> Result<i64, String> {
        v.parse()
            .map_err(|_| format!("{v:?} is not a number in {line:?}"))
    };
    Ok(match target {
        "value" | "val" => Comparison::value(key, op, value.as_bytes()),
        "mod" | "m" => Comparison::mod_revision(key, op, number(value)?),
        "create" | "c" => Comparison::create_revision(key, op, number(value)?),
        "version" | "ver" => Comparison::version(key, op, number(value)?),
        "lease" => {
            let id = i64::from_str_radix(value.trim_start_matches("0x"), 16)
                .map_err(|_| format!("{value:?} is not a lease id in hex in {line:?}"))?;
            Comparison::lease(key, op, id)
        }
        _ => return Err(bad()),
    })
}

/// One request line.
fn request(line: &str) -> Result<TxnOp, String> {
    let w = words(line)?;
    let flags: Vec<&str> = w
        .iter()
        .filter(|x| x.starts_with("--"))
        .map(String::as_str)
        .collect();
    let args: Vec<&str> = w
        .iter()
        .filter(|x| !x.starts_with("--"))
        .map(String::as_str)
        .collect();
    let prefix = flags.contains(&"--prefix");
    if let Some(f) = flags.iter().find(|f| **f != "--prefix") {
        return Err(format!(
            "unknown flag {f} in {line:?} (only --prefix is read)"
        ));
    }
    match args.as_slice() {
        ["put", key, value] => Ok(TxnOp::put(*key, *value, None)),
        ["get", key] => Ok(TxnOp::get(
            *key,
            Some(if prefix {
                GetOptions::new().with_prefix()
            } else {
                GetOptions::new()
            }),
        )),
        ["get", key, end] => Ok(TxnOp::get(*key, Some(GetOptions::new().with_range(*end)))),
        ["del" | "delete", key] => Ok(TxnOp::delete(
            *key,
            Some(if prefix {
                DeleteOptions::new().with_prefix()
            } else {
                DeleteOptions::new()
            }),
        )),
        ["del" | "delete", key, end] => Ok(TxnOp::delete(
            *key,
            Some(DeleteOptions::new().with_range(*end)),
        )),
        _ => Err(format!(
            "cannot read the request {line:?} (write put KEY VALUE, get KEY [END] [--prefix] or \
             del KEY [END] [--prefix])"
        )),
    }
}

/// Reads a transaction in etcdctl's format.
pub fn parse(input: &str) -> Result<Txn, String> {
    let mut parts: Vec<Vec<&str>> = vec![Vec::new()];
    for line in input.lines() {
        if line.trim().is_empty() {
            if parts.len() < 3 {
                parts.push(Vec::new());
            }
            continue;
        }
        if let Some(part) = parts.last_mut() {
            part.push(line.trim());
        }
    }
    parts.resize(3, Vec::new());
    let compares = parts[0]
        .iter()
        .map(|l| comparison(l))
        .collect::<Result<Vec<_>, _>>()?;
    let success = parts[1]
        .iter()
        .map(|l| request(l))
        .collect::<Result<Vec<_>, _>>()?;
    let failure = parts[2]
        .iter()
        .map(|l| request(l))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Txn::new().when(compares).and_then(success).or_else(failure))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_on_spaces_and_keep_quoted_groups() {
        assert_eq!(
            words(r#"put "a key" "say \"hi\"""#).expect("words"),
            vec!["put", "a key", "say \"hi\""]
        );
        assert!(words(r#"put "open"#).is_err());
    }

    #[test]
    fn etcdctls_format_is_read() {
        let input =
            "value(\"k\") = \"v\"\nmod(\"k\") > \"3\"\n\nput k v2\nget k\n\ndel k --prefix\n";
        assert!(parse(input).is_ok());
        assert!(parse("value(\"k\") ~ \"v\"\n\n\n").is_err());
        assert!(parse("mod(\"k\") > \"x\"\n\n\n").is_err());
        assert!(parse("\nfrobnicate k\n\n").is_err());
        assert!(parse("\nget k --rev 3\n\n").is_err());
        assert!(parse(")value(\"k\" = \"v\"\n\n\n").is_err());
        // Only requests: no comparisons, the success part runs.
        assert!(parse("\nput a 1\nput b 2\n\n").is_ok());
    }

    proptest::proptest! {
        /// Whatever is typed, the parser answers (never panics).
        #[test]
        fn any_input_gets_an_answer(input in "[a-z()\"=<>!\\ \n-]{0,80}") {
            let _ = parse(&input);
        }
    }
}
