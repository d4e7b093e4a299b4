//! The static Huffman code of HPACK (RFC 7541, Appendix B).
//!
//! The code is canonical: within one code length, codes are consecutive in
//! symbol order, and the first code of a length follows the last code of the
//! previous length. Decoding walks the input bit by bit and, at each length,
//! checks whether the accumulated bits fall into that length's code range;
//! the ranges are derived at compile time from the table below.

/// `(code, length in bits)` for symbols 0..=255 and EOS (256), RFC 7541
/// Appendix B.
pub(crate) const CODES: [(u32, u8); 257] = [
    (0x1ff8, 13),
    (0x7fffd8, 23),
    (0xfffffe2, 28),
    (0xfffffe3, 28),
    (0xfffffe4, 28),
    (0xfffffe5, 28),
    (0xfffffe6, 28),
    (0xfffffe7, 28),
    (0xfffffe8, 28),
    (0xffffea, 24),
    (0x3ffffffc, 30),
    (0xfffffe9, 28),
    (0xfffffea, 28),
    (0x3ffffffd, 30),
    (0xfffffeb, 28),
    (0xfffffec, 28),
    (0xfffffed, 28),
    (0xfffffee, 28),
    (0xfffffef, 28),
    (0xffffff0, 28),
    (0xffffff1, 28),
    (0xffffff2, 28),
    (0x3ffffffe, 30),
    (0xffffff3, 28),
    (0xffffff4, 28),
    (0xffffff5, 28),
    (0xffffff6, 28),
    (0xffffff7, 28),
    (0xffffff8, 28),
    (0xffffff9, 28),
    (0xffffffa, 28),
    (0xffffffb, 28),
    (0x14, 6),     // ' '
    (0x3f8, 10),   // '!'
    (0x3f9, 10),   // '"'
    (0xffa, 12),   // '#'
    (0x1ff9, 13),  // '$'
    (0x15, 6),     // '%'
    (0xf8, 8),     // '&'
    (0x7fa, 11),   // '\''
    (0x3fa, 10),   // '('
    (0x3fb, 10),   // ')'
    (0xf9, 8),     // '*'
    (0x7fb, 11),   // '+'
    (0xfa, 8),     // ','
    (0x16, 6),     // '-'
    (0x17, 6),     // '.'
    (0x18, 6),     // '/'
    (0x0, 5),      // '0'
    (0x1, 5),      // '1'
    (0x2, 5),      // '2'
    (0x19, 6),     // '3'
    (0x1a, 6),     // '4'
    (0x1b, 6),     // '5'
    (0x1c, 6),     // '6'
    (0x1d, 6),     // '7'
    (0x1e, 6),     // '8'
    (0x1f, 6),     // '9'
    (0x5c, 7),     // ':'
    (0xfb, 8),     // ';'
    (0x7ffc, 15),  // '<'
    (0x20, 6),     // '='
    (0xffb, 12),   // '>'
    (0x3fc, 10),   // '?'
    (0x1ffa, 13),  // '@'
    (0x21, 6),     // 'A'
    (0x5d, 7),     // 'B'
    (0x5e, 7),     // 'C'
    (0x5f, 7),     // 'D'
    (0x60, 7),     // 'E'
    (0x61, 7),     // 'F'
    (0x62, 7),     // 'G'
    (0x63, 7),     // 'H'
    (0x64, 7),     // 'I'
    (0x65, 7),     // 'J'
    (0x66, 7),     // 'K'
    (0x67, 7),     // 'L'
    (0x68, 7),     // 'M'
    (0x69, 7),     // 'N'
    (0x6a, 7),     // 'O'
    (0x6b, 7),     // 'P'
    (0x6c, 7),     // 'Q'
    (0x6d, 7),     // 'R'
    (0x6e, 7),     // 'S'
    (0x6f, 7),     // 'T'
    (0x70, 7),     // 'U'
    (0x71, 7),     // 'V'
    (0x72, 7),     // 'W'
    (0xfc, 8),     // 'X'
    (0x73, 7),     // 'Y'
    (0xfd, 8),     // 'Z'
    (0x1ffb, 13),  // '['
    (0x7fff0, 19), // '\\'
    (0x1ffc, 13),  // ']'
    (0x3ffc, 14),  // '^'
    (0x22, 6),     // '_'
    (0x7ffd, 15),  // '`'
    (0x3, 5),      // 'a'
    (0x23, 6),     // 'b'
    (0x4, 5),      // 'c'
    (0x24, 6),     // 'd'
    (0x5, 5),      // 'e'
    (0x25, 6),     // 'f'
    (0x26, 6),     // 'g'
    (0x27, 6),     // 'h'
    (0x6, 5),      // 'i'
    (0x74, 7),     // 'j'
    (0x75, 7),     // 'k'
    (0x28, 6),     // 'l'
    (0x29, 6),     // 'm'
    (0x2a, 6),     // 'n'
    (0x7, 5),      // 'o'
    (0x2b, 6),     // 'p'
    (0x76, 7),     // 'q'
    (0x2c, 6),     // 'r'
    (0x8, 5),      // 's'
    (0x9, 5),      // 't'
    (0x2d, 6),     // 'u'
    (0x77, 7),     // 'v'
    (0x78, 7),     // 'w'
    (0x79, 7),     // 'x'
    (0x7a, 7),     // 'y'
    (0x7b, 7),     // 'z'
    (0x7ffe, 15),  // '{'
    (0x7fc, 11),   // '|'
    (0x3ffd, 14),  // '}'
    (0x1ffd, 13),  // '~'
    (0xffffffc, 28),
    (0xfffe6, 20),
    (0x3fffd2, 22),
    (0xfffe7, 20),
    (0xfffe8, 20),
    (0x3fffd3, 22),
    (0x3fffd4, 22),
    (0x3fffd5, 22),
    (0x7fffd9, 23),
    (0x3fffd6, 22),
    (0x7fffda, 23),
    (0x7fffdb, 23),
    (0x7fffdc, 23),
    (0x7fffdd, 23),
    (0x7fffde, 23),
    (0xffffeb, 24),
    (0x7fffdf, 23),
    (0xffffec, 24),
    (0xffffed, 24),
    (0x3fffd7, 22),
    (0x7fffe0, 23),
    (0xffffee, 24),
    (0x7fffe1, 23),
    (0x7fffe2, 23),
    (0x7fffe3, 23),
    (0x7fffe4, 23),
    (0x1fffdc, 21),
    (0x3fffd8, 22),
    (0x7fffe5, 23),
    (0x3fffd9, 22),
    (0x7fffe6, 23),
    (0x7fffe7, 23),
    (0xffffef, 24),
    (0x3fffda, 22),
    (0x1fffdd, 21),
    (0xfffe9, 20),
    (0x3fffdb, 22),
    (0x3fffdc, 22),
    (0x7fffe8, 23),
    (0x7fffe9, 23),
    (0x1fffde, 21),
    (0x7fffea, 23),
    (0x3fffdd, 22),
    (0x3fffde, 22),
    (0xfffff0, 24),
    (0x1fffdf, 21),
    (0x3fffdf, 22),
    (0x7fffeb, 23),
    (0x7fffec, 23),
    (0x1fffe0, 21),
    (0x1fffe1, 21),
    (0x3fffe0, 22),
    (0x1fffe2, 21),
    (0x7fffed, 23),
    (0x3fffe1, 22),
    (0x7fffee, 23),
    (0x7fffef, 23),
    (0xfffea, 20),
    (0x3fffe2, 22),
    (0x3fffe3, 22),
    (0x3fffe4, 22),
    (0x7ffff0, 23),
    (0x3fffe5, 22),
    (0x3fffe6, 22),
    (0x7ffff1, 23),
    (0x3ffffe0, 26),
    (0x3ffffe1, 26),
    (0xfffeb, 20),
    (0x7fff1, 19),
    (0x3fffe7, 22),
    (0x7ffff2, 23),
    (0x3fffe8, 22),
    (0x1ffffec, 25),
    (0x3ffffe2, 26),
    (0x3ffffe3, 26),
    (0x3ffffe4, 26),
    (0x7ffffde, 27),
    (0x7ffffdf, 27),
    (0x3ffffe5, 26),
    (0xfffff1, 24),
    (0x1ffffed, 25),
    (0x7fff2, 19),
    (0x1fffe3, 21),
    (0x3ffffe6, 26),
    (0x7ffffe0, 27),
    (0x7ffffe1, 27),
    (0x3ffffe7, 26),
    (0x7ffffe2, 27),
    (0xfffff2, 24),
    (0x1fffe4, 21),
    (0x1fffe5, 21),
    (0x3ffffe8, 26),
    (0x3ffffe9, 26),
    (0xffffffd, 28),
    (0x7ffffe3, 27),
    (0x7ffffe4, 27),
    (0x7ffffe5, 27),
    (0xfffec, 20),
    (0xfffff3, 24),
    (0xfffed, 20),
    (0x1fffe6, 21),
    (0x3fffe9, 22),
    (0x1fffe7, 21),
    (0x1fffe8, 21),
    (0x7ffff3, 23),
    (0x3fffea, 22),
    (0x3fffeb, 22),
    (0x1ffffee, 25),
    (0x1ffffef, 25),
    (0xfffff4, 24),
    (0xfffff5, 24),
    (0x3ffffea, 26),
    (0x7ffff4, 23),
    (0x3ffffeb, 26),
    (0x7ffffe6, 27),
    (0x3ffffec, 26),
    (0x3ffffed, 26),
    (0x7ffffe7, 27),
    (0x7ffffe8, 27),
    (0x7ffffe9, 27),
    (0x7ffffea, 27),
    (0x7ffffeb, 27),
    (0xffffffe, 28),
    (0x7ffffec, 27),
    (0x7ffffed, 27),
    (0x7ffffee, 27),
    (0x7ffffef, 27),
    (0x7fffff0, 27),
    (0x3ffffee, 26),
    (0x3fffffff, 30), // EOS
];

/// Symbol value of the end-of-string marker.
const EOS: u16 = 256;

/// Longest code length.
const MAX_LEN: usize = 30;

/// Canonical decoding tables: for each code length, the first code of that
/// length, how many codes have it, and where its symbols start in `SYMBOLS`.
struct Canon {
    first: [u32; MAX_LEN + 1],
    count: [u32; MAX_LEN + 1],
    offset: [u16; MAX_LEN + 1],
    /// Symbols ordered by (code length, symbol).
    symbols: [u16; 257],
}

const fn build_canon() -> Canon {
    let mut count = [0u32; MAX_LEN + 1];
    let mut i = 0;
    while i < 257 {
        count[CODES[i].1 as usize] += 1;
        i += 1;
    }
    let mut offset = [0u16; MAX_LEN + 1];
    let mut first = [0u32; MAX_LEN + 1];
    let mut code = 0u32;
    let mut off = 0u16;
    let mut len = 1;
    while len <= MAX_LEN {
        code <<= 1;
        first[len] = code;
        offset[len] = off;
        code += count[len];
        off += count[len] as u16;
        len += 1;
    }
    let mut symbols = [0u16; 257];
    let mut fill = offset;
    let mut len = 1;
    while len <= MAX_LEN {
        let mut s = 0;
        while s < 257 {
            if CODES[s].1 as usize == len {
                symbols[fill[len] as usize] = s as u16;
                fill[len] += 1;
            }
            s += 1;
        }
        len += 1;
    }
    Canon { first, count, offset, symbols }
}

static CANON: Canon = build_canon();

/// Why a Huffman string could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HuffmanError {
    /// The EOS symbol appeared inside the string.
    Eos,
    /// More than 7 bits of padding, or padding that is not a prefix of EOS.
    BadPadding,
}

/// Decode a Huffman-coded string, appending the result to `out`. On error
/// `out` may hold a partial result.
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    out.reserve(input.len() + input.len() / 2);
    let mut code: u32 = 0;
    let mut len: usize = 0;
    for &byte in input {
        let mut bit = 8;
        while bit > 0 {
            bit -= 1;
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            if len > MAX_LEN {
                // Every 30-bit sequence is either a code or a prefix of one
                // of length <= 30: cannot happen with a complete code, but
                // stay total.
                return Err(HuffmanError::BadPadding);
            }
            let (Some(&first), Some(&count)) = (CANON.first.get(len), CANON.count.get(len)) else {
                return Err(HuffmanError::BadPadding);
            };
            if count > 0 && code >= first && code - first < count {
                let idx = usize::from(CANON.offset.get(len).copied().unwrap_or(0)) + (code - first) as usize;
                let sym = CANON.symbols.get(idx).copied().unwrap_or(EOS);
                if sym == EOS {
                    return Err(HuffmanError::Eos);
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (a prefix of EOS).
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::BadPadding);
    }
    Ok(())
}

/// Huffman-encode `input` (used by tests and fixture builders).
pub fn encode(input: &[u8], out: &mut Vec<u8>) {
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &b in input {
        let (code, len) = CODES[usize::from(b)];
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1u64 << bits) - 1;
    }
    if bits > 0 {
        let pad = 8 - bits;
        out.push(((acc << pad) | ((1u64 << pad) - 1)) as u8);
    }
}

/// Length of the Huffman encoding of `input`, in bytes.
pub fn encoded_len(input: &[u8]) -> usize {
    let bits: usize = input.iter().map(|&b| usize::from(CODES[usize::from(b)].1)).sum();
    bits.div_ceil(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn table_is_canonical_and_complete() {
        // Codes assigned in (length, symbol) order are consecutive.
        let mut order: Vec<usize> = (0..257).collect();
        order.sort_by_key(|&s| (CODES[s].1, s));
        let mut code: u64 = 0;
        let mut prev_len = CODES[order[0]].1;
        for (i, &s) in order.iter().enumerate() {
            let (c, l) = CODES[s];
            if i > 0 {
                code += 1;
                code <<= l - prev_len;
            } else {
                code = 0;
            }
            prev_len = l;
            assert_eq!(u64::from(c), code, "symbol {s}");
            assert!(u64::from(c) < (1u64 << l), "symbol {s} code too long");
        }
        // Kraft equality: the code is complete.
        let kraft: u64 = CODES.iter().map(|&(_, l)| 1u64 << (30 - l)).sum();
        assert_eq!(kraft, 1u64 << 30);
        assert_eq!(CODES[256], (0x3fffffff, 30));
    }

    #[test]
    fn rfc7541_c4_request_strings() {
        let cases: [(&str, &str); 4] = [
            ("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"),
            ("no-cache", "a8eb 1064 9cbf"),
            ("custom-key", "25a8 49e9 5ba9 7d7f"),
            ("custom-value", "25a8 49e9 5bb8 e8b4 bf"),
        ];
        for (plain, coded) in cases {
            let mut out = Vec::new();
            decode(&hex(coded), &mut out).unwrap();
            assert_eq!(out, plain.as_bytes());
            let mut enc = Vec::new();
            encode(plain.as_bytes(), &mut enc);
            assert_eq!(enc, hex(coded));
            assert_eq!(encoded_len(plain.as_bytes()), enc.len());
        }
    }

    #[test]
    fn rfc7541_c6_response_strings() {
        let cases: [(&str, &str); 8] = [
            ("302", "6402"),
            ("private", "aec3 771a 4b"),
            (
                "Mon, 21 Oct 2013 20:13:21 GMT",
                "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
            ),
            ("https://www.example.com", "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3"),
            ("307", "640e ff"),
            (
                "Mon, 21 Oct 2013 20:13:22 GMT",
                "d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff",
            ),
            ("gzip", "9bd9 ab"),
            (
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
                "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ),
        ];
        for (plain, coded) in cases {
            let mut out = Vec::new();
            decode(&hex(coded), &mut out).unwrap();
            assert_eq!(out, plain.as_bytes(), "{plain}");
            let mut enc = Vec::new();
            encode(plain.as_bytes(), &mut enc);
            assert_eq!(enc, hex(coded), "{plain}");
        }
    }

    #[test]
    fn all_bytes_round_trip() {
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let mut enc = Vec::new();
        encode(&all, &mut enc);
        let mut out = Vec::new();
        decode(&enc, &mut out).unwrap();
        assert_eq!(out, all);
        let mut out = Vec::new();
        decode(&[], &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn padding_and_eos_are_validated() {
        // '0' is 00000; padding 111 is fine.
        let mut out = Vec::new();
        assert_eq!(decode(&[0b0000_0111], &mut out), Ok(()));
        assert_eq!(out, b"0");
        // Padding with a zero bit.
        assert_eq!(decode(&[0b0000_0110], &mut Vec::new()), Err(HuffmanError::BadPadding));
        // A whole byte of ones is more than 7 bits of padding.
        assert_eq!(decode(&[0b0000_0111, 0xff], &mut Vec::new()), Err(HuffmanError::BadPadding));
        // EOS encoded explicitly (30 ones) followed by padding.
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff], &mut Vec::new()), Err(HuffmanError::Eos));
    }
}
