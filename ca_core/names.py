"""Distinguished names built in a fixed order (asn1crypto's Name.build sorts and merges attributes)."""
from __future__ import annotations

from asn1crypto import core, x509

_ATTR = {
    "C": "country_name",
    "ST": "state_or_province_name",
    "L": "locality_name",
    "O": "organization_name",
    "OU": "organizational_unit_name",
    "CN": "common_name",
}


def build_name(pairs) -> x509.Name:
    """A Name with one attribute per RDN, in the given order. C is PrintableString (RFC 5280 appendix A),
    the others UTF8String (RFC 5280 section 4.1.2.6)."""
    rdns = []
    for attr, value in pairs:
        kind = _ATTR[attr]
        if kind == "country_name":
            encoded = core.PrintableString(value)
        else:
            encoded = x509.DirectoryString(name="utf8_string", value=value)
        rdns.append(x509.RelativeDistinguishedName([
            x509.NameTypeAndValue({"type": kind, "value": encoded})
        ]))
    return x509.Name(name="", value=x509.RDNSequence(rdns))
