//! Which CMVP certificate, if any, `encryption show` may name for the crypto
//! module this binary runs. An entry exists only where docs/FIPS.md ties the
//! certificate to that exact module version, with its source; a test checks
//! every entry against docs/FIPS.md. For any other version `show` names the
//! module and says the certificate must be checked for it.

pub struct Certified {
    /// The module's name as it reports itself at run time.
    pub module: &'static str,
    pub certificate: &'static str,
}

pub const CERTIFIED: &[Certified] = &[Certified {
    module: "AWS-LC FIPS 3.1.0",
    certificate: "CMVP #5314 (static library)",
}];

/// The certificate docs/FIPS.md ties to exactly `module`, if any.
pub fn certificate_for(module: &str) -> Option<&'static str> {
    CERTIFIED
        .iter()
        .find(|c| c.module == module)
        .map(|c| c.certificate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_certificate_entry_is_documented_in_fips_md() {
        let doc = include_str!("../../docs/FIPS.md");
        for c in CERTIFIED {
            let line = format!("| {} | {} |", c.module, c.certificate);
            assert!(doc.contains(&line), "docs/FIPS.md lacks the row {line}");
        }
    }

    #[test]
    fn the_pinned_module_gets_no_certificate_it_cannot_prove() {
        assert_eq!(certificate_for("AWS-LC FIPS 3.6.0"), None);
        assert_eq!(
            certificate_for("AWS-LC FIPS 3.1.0"),
            Some("CMVP #5314 (static library)")
        );
    }
}
