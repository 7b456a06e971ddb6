#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    polis_fuzz::pcr_authority(data);
});
