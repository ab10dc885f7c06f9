//! The common name of a client certificate's subject, which etcd takes as
//! the user of a request that carries no token. A small DER reader of the
//! few structures on the way (the certificate was verified by rustls
//! already; what is read here is only its subject).

/// The subject's common name (OID 2.5.4.3) of a DER certificate; `None`
/// when there is none or the bytes are not a certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    let (cert, _) = element(der, SEQUENCE)?;
    let (tbs, _) = element(cert, SEQUENCE)?;
    // TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber,
    //   signature, issuer, validity, subject, ... }
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = skip(rest)?;
    }
    for _ in 0..4 {
        // serial, signature algorithm, issuer, validity
        rest = skip(rest)?;
    }
    let (subject, _) = element(rest, SEQUENCE)?;
    // Name ::= SEQUENCE OF RelativeDistinguishedName (SET OF
    //   AttributeTypeAndValue ::= SEQUENCE { type OID, value ANY })
    let mut rdns = subject;
    let mut found = None;
    while !rdns.is_empty() {
        let (set, after) = element(rdns, SET)?;
        rdns = after;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (attr, after) = element(attrs, SEQUENCE)?;
            attrs = after;
            let (oid, value) = element(attr, OID)?;
            if oid == COMMON_NAME {
                let (tag, body) = (value.first()?, element_any(value)?);
                if matches!(
                    *tag,
                    UTF8_STRING | PRINTABLE_STRING | IA5_STRING | T61_STRING
                ) {
                    found = Some(String::from_utf8_lossy(body).into_owned());
                }
            }
        }
    }
    found
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const T61_STRING: u8 = 0x14;
const IA5_STRING: u8 = 0x16;
/// 2.5.4.3, encoded.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The tag, the body and what follows the element at the start of `der`.
fn split(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *der.first()?;
    let first = *der.get(1)?;
    let (len, head) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*der.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    if end > der.len() {
        return None;
    }
    Some((tag, &der[head..end], &der[end..]))
}

/// The body of an element of tag `tag`, and what follows it.
fn element(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, body, rest) = split(der)?;
    (t == tag).then_some((body, rest))
}

fn element_any(der: &[u8]) -> Option<&[u8]> {
    split(der).map(|(_, body, _)| body)
}

fn skip(der: &[u8]) -> Option<&[u8]> {
    split(der).map(|(_, _, rest)| rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_of_a_generated_certificate_is_read() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "dengine tests");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(common_name(cert.der()).as_deref(), Some("alice"));
    }

    #[test]
    fn no_name_or_garbage_gives_none() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(common_name(cert.der()), None);
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        let der = cert.der().to_vec();
        for cut in 0..der.len() {
            let _ = common_name(&der[..cut]);
        }
    }
}
