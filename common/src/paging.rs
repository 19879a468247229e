//! Page sizes for every list call: listing is never unbounded.

/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page; larger requests are coerced down to it.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The page size to use for a requested size.
pub fn page_size(requested: u32) -> usize {
    match usize::try_from(requested).unwrap_or(MAX_PAGE_SIZE) {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_caps() {
        assert_eq!(page_size(0), 100);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(1000), 1000);
        assert_eq!(page_size(50_000), 1000);
    }
}
