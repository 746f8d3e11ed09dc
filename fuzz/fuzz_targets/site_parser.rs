//! The site file: any text gets a config or an error naming a line, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ocs_service::site::SiteConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(err) = SiteConfig::parse(Path::new("site.yaml"), text)
    {
        assert!(err.to_string().starts_with("site.yaml"), "{err}");
    }
});
