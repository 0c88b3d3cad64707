//! CSV range files: `start_ip,end_ip,value[,...]`, inclusive ranges.

use std::net::IpAddr;
use std::path::Path;

use super::ranges::{Family, Row};
use super::{CsvProblem, GeoError, Source, Want};

/// Error texts quote at most this much of a bad field, so a binary file fed by mistake does not
/// end up in the log whole.
const QUOTE_LIMIT: usize = 64;

pub(crate) fn read(path: &Path, text: &[u8], want: Want) -> Result<Source, GeoError> {
    let mut source = Source::default();
    let mut fields: Vec<&[u8]> = Vec::with_capacity(8);
    let mut seen_content = false;
    for (index, line) in text.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let fail = |problem| GeoError::Csv {
            path: path.to_path_buf(),
            line: number,
            problem,
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() || trimmed.starts_with(b"#") {
            continue;
        }
        split(line, &mut fields).map_err(fail)?;
        let first_content = !seen_content;
        seen_content = true;
        // A header is told apart from data by its first field, which is not an address.
        if first_content && fields.first().is_some_and(|f| parse_ip(f).is_err()) {
            continue;
        }
        // Line numbers past u32::MAX only lose the tie-break between overlapping rows.
        let rank = u32::try_from(number).unwrap_or(u32::MAX);
        parse_row(&fields, want, rank, &mut source).map_err(fail)?;
    }
    Ok(source)
}

fn parse_row(
    fields: &[&[u8]],
    want: Want,
    rank: u32,
    source: &mut Source,
) -> Result<(), CsvProblem> {
    let [start, end, value, ..] = fields else {
        return Err(CsvProblem::TooFewFields(fields.len()));
    };
    let start = parse_ip(start)?;
    let end = parse_ip(end)?;
    let (start, end) = match (start, end) {
        (IpAddr::V6(s), IpAddr::V6(e)) => match (s.to_ipv4_mapped(), e.to_ipv4_mapped()) {
            // Both ends IPv4-mapped: an IPv4 range written in IPv6 notation.
            (Some(s), Some(e)) => (IpAddr::V4(s), IpAddr::V4(e)),
            _ => (start, end),
        },
        _ => (start, end),
    };
    let ((family, start), (end_family, end)) = (Family::of(start), Family::of(end));
    if family != end_family {
        return Err(CsvProblem::MixedFamilies);
    }
    if end < start {
        return Err(CsvProblem::EndBeforeStart);
    }
    let value = value.trim_ascii();
    if want.asn {
        let asn = parse_asn(value).ok_or_else(|| CsvProblem::BadAsn(quote(value)))?;
        if asn != 0 {
            source.push_asn(family, Row::new(start, end, rank, asn));
        }
    } else if want.country {
        let code = <[u8; 2]>::try_from(value)
            .ok()
            .filter(|code| code.iter().all(u8::is_ascii_alphabetic))
            .ok_or_else(|| CsvProblem::BadCountry(quote(value)))?;
        let country = source.countries.intern(code);
        if country != 0 {
            source.push_country(family, Row::new(start, end, rank, country));
        }
    }
    Ok(())
}

fn parse_ip(field: &[u8]) -> Result<IpAddr, CsvProblem> {
    let field = field.trim_ascii();
    std::str::from_utf8(field)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| CsvProblem::BadAddress(quote(field)))
}

/// `13335` or `AS13335`; `None` when malformed or above `u32::MAX`.
fn parse_asn(field: &[u8]) -> Option<u32> {
    let digits = match field {
        [a, s, rest @ ..] if a.eq_ignore_ascii_case(&b'a') && s.eq_ignore_ascii_case(&b's') => rest,
        _ => field,
    };
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn quote(field: &[u8]) -> String {
    let shown = &field[..field.len().min(QUOTE_LIMIT)];
    String::from_utf8_lossy(shown).into_owned()
}

/// Splits one line at commas outside double quotes. A quoted field comes back without its
/// quotes and with any doubled quotes inside left as they are: only the organisation name may
/// contain them, and it is not used.
fn split<'a>(line: &'a [u8], fields: &mut Vec<&'a [u8]>) -> Result<(), CsvProblem> {
    fields.clear();
    let mut rest = line;
    loop {
        let after_spaces = rest.trim_ascii_start();
        if let Some(quoted) = after_spaces.strip_prefix(b"\"") {
            let mut i = 0;
            let close = loop {
                match quoted
                    .get(i..)
                    .and_then(|tail| tail.iter().position(|&b| b == b'"'))
                {
                    Some(at) if quoted.get(i + at + 1) == Some(&b'"') => i += at + 2,
                    Some(at) => break i + at,
                    None => return Err(CsvProblem::UnterminatedQuote),
                }
            };
            fields.push(&quoted[..close]);
            let after = quoted[close + 1..].trim_ascii_start();
            match after.split_first() {
                None => return Ok(()),
                Some((b',', tail)) => rest = tail,
                Some(_) => return Err(CsvProblem::TextAfterQuote),
            }
        } else {
            match rest.iter().position(|&b| b == b',') {
                Some(at) => {
                    fields.push(&rest[..at]);
                    rest = &rest[at + 1..];
                }
                None => {
                    fields.push(rest);
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(line: &str) -> Result<Vec<String>, CsvProblem> {
        let mut out = Vec::new();
        split(line.as_bytes(), &mut out)?;
        Ok(out
            .iter()
            .map(|f| String::from_utf8(f.to_vec()).unwrap())
            .collect())
    }

    #[test]
    fn splits_quoted_fields() {
        assert_eq!(
            fields(r#"1.0.0.0,1.0.0.255,13335,"Cloudflare, Inc.""#).unwrap(),
            ["1.0.0.0", "1.0.0.255", "13335", "Cloudflare, Inc."]
        );
        assert_eq!(fields(r#""a""b",c,,"#).unwrap(), [r#"a""b"#, "c", "", ""]);
        assert_eq!(fields(r#"a, "b" ,c"#).unwrap(), ["a", "b", "c"]);
        assert_eq!(fields(r#"a,"b"#), Err(CsvProblem::UnterminatedQuote));
        assert_eq!(fields(r#"a,"b"x,c"#), Err(CsvProblem::TextAfterQuote));
        assert_eq!(fields(r#"a,b "c" d"#).unwrap(), ["a", r#"b "c" d"#]);
    }

    #[test]
    fn asn_forms() {
        assert_eq!(parse_asn(b"13335"), Some(13335));
        assert_eq!(parse_asn(b"AS13335"), Some(13335));
        assert_eq!(parse_asn(b"as0"), Some(0));
        assert_eq!(parse_asn(b"4294967295"), Some(u32::MAX));
        for bad in [
            &b""[..],
            b"AS",
            b"4294967296",
            b"-1",
            b"1.5",
            b"AS 1",
            b"12a",
        ] {
            assert_eq!(parse_asn(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
