//! Tool and argument names: `[A-Za-z0-9_-]`, at most 64 characters (what model
//! APIs accept for function names), de-duplicated with a stable `_2`, `_3`… suffix.

use std::collections::HashSet;

/// Longest tool name an import produces (model APIs refuse longer function names).
pub const NAME_MAX: usize = 64;

/// `raw` with every character outside `[A-Za-z0-9_-]` replaced by `_`, runs of `_`
/// collapsed, leading and trailing `_` dropped, cut to [`NAME_MAX`]; `fallback` when
/// nothing is left.
pub fn normalize_name(raw: &str, fallback: &str) -> String {
    let mut out = String::with_capacity(raw.len().min(NAME_MAX));
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' };
        if c == '_' && (out.is_empty() || out.ends_with('_')) {
            continue;
        }
        out.push(c);
        if out.len() >= NAME_MAX {
            break;
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    if out.is_empty() { fallback.to_string() } else { out }
}

/// `base` if nobody has it, else `base_2`, `base_3`… (the base cut so the whole
/// stays within [`NAME_MAX`]). The caller records the result in `taken`.
pub fn unique_name(base: &str, taken: &HashSet<String>) -> String {
    if !taken.contains(base) {
        return base.to_string();
    }
    let mut n: u32 = 2;
    loop {
        let suffix = format!("_{n}");
        let keep = NAME_MAX.saturating_sub(suffix.len());
        // Names are ASCII, so any byte index is a character boundary.
        let stem = base.get(..base.len().min(keep)).unwrap_or(base);
        let candidate = format!("{stem}{suffix}");
        if !taken.contains(&candidate) {
            return candidate;
        }
        n = n.saturating_add(1);
    }
}
