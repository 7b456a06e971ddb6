//! One OpenSSL library context for the TPM library's crypto on a thread that holds a
//! [`Sealer`](super::Sealer).
//!
//! ESYS 3.2 (Debian 12's libtss2-esys) makes a new OpenSSL library context for every hash, HMAC,
//! cipher and key exchange it computes, every command's parameter hashes and session HMACs
//! included, and OpenSSL 3 builds each new context's name map and provider store from nothing:
//! four fifths of a seal's time and of an unseal's on swtpm (`polisctl bench`'s TPM rows, issue
//! 12). ESYS 4.0 takes crypto callbacks instead; 3.2 has no way in but the symbols it imports.
//!
//! So Polis defines `OSSL_LIB_CTX_new` and `OSSL_LIB_CTX_free` itself. The dynamic linker binds
//! libtss2-esys's calls to an executable's definitions before libcrypto's. On a thread that holds
//! a sealer (a [`Sealing`] guard: a sealer never leaves the thread that connected it) they hand
//! out one context and never free it; everywhere else (libcryptsetup's context, say) they pass
//! the call on to libcrypto. ESYS gives the context only to algorithm fetches and key contexts,
//! which OpenSSL makes safe to share between threads.
//!
//! The context handed out is libcrypto's default one. ESYS 3.2 computes its key exchanges,
//! parameter encryption and nonces there already (it passes no context to those), so a process
//! that seals builds that context's tables anyway; its hashes and HMACs then find them instead
//! of a second context's, built from nothing in a restart's first unseal (≈ 1.4 ms, issue 12).
//! ESYS keeps its hashes apart for fear of a TPM provider loaded into the default context; the
//! node's OpenSSL configuration loads none, and if it did, ESYS's key exchange would meet it
//! there first.

use std::cell::Cell;
use std::ffi::{c_void, CStr};
use std::sync::OnceLock;

thread_local! {
    /// How many sealers this thread holds.
    static SEALERS: Cell<usize> = const { Cell::new(0) };
}

#[cfg(test)]
thread_local! {
    /// How often this thread was handed the shared context: the tests' proof that ESYS's calls
    /// reach Polis's definitions.
    pub(super) static HANDED: Cell<usize> = const { Cell::new(0) };
}

/// The context every sealer's thread shares, libcrypto's default one (an address: a raw pointer
/// is not `Sync`).
static SHARED: OnceLock<usize> = OnceLock::new();

/// Held by a [`Sealer`](super::Sealer) for its life: ESYS's contexts on this thread are the
/// shared one meanwhile.
pub(super) struct Sealing;

impl Sealing {
    /// Share the context on this thread until the guard drops.
    pub(super) fn enter() -> Sealing {
        SEALERS.with(|n| n.set(n.get() + 1));
        Sealing
    }
}

impl Drop for Sealing {
    fn drop(&mut self) {
        SEALERS.with(|n| n.set(n.get() - 1));
    }
}

/// libcrypto's `OSSL_LIB_CTX_new`, replaced: the shared context on a sealer's thread.
///
/// # Safety
/// As libcrypto's: none of its own; the pointer is an `OSSL_LIB_CTX`, or null if libcrypto
/// could not make one.
#[no_mangle]
pub unsafe extern "C" fn OSSL_LIB_CTX_new() -> *mut c_void {
    if !sealing() {
        return new_context();
    }
    let shared = *SHARED.get_or_init(|| default_context() as usize);
    if shared == 0 {
        // libcrypto had no context to share: this call and later ones get their own.
        return new_context();
    }
    #[cfg(test)]
    HANDED.with(|n| n.set(n.get() + 1));
    shared as *mut c_void
}

/// libcrypto's `OSSL_LIB_CTX_free`, replaced: the shared context is never freed.
///
/// # Safety
/// As libcrypto's: `context` is null or a context from [`OSSL_LIB_CTX_new`] not freed yet.
#[no_mangle]
pub unsafe extern "C" fn OSSL_LIB_CTX_free(context: *mut c_void) {
    if context.is_null() || SHARED.get() == Some(&(context as usize)) {
        return;
    }
    if let Some(free) = libcrypto::<unsafe extern "C" fn(*mut c_void)>(c"OSSL_LIB_CTX_free") {
        free(context);
    }
}

/// Whether this thread holds a sealer.
fn sealing() -> bool {
    SEALERS.with(|n| n.get() > 0)
}

/// libcrypto's default context; null if it has none to give.
fn default_context() -> *mut c_void {
    context_from(c"OSSL_LIB_CTX_get0_global_default")
}

/// A new context from libcrypto itself; null if it has none to give.
fn new_context() -> *mut c_void {
    context_from(c"OSSL_LIB_CTX_new")
}

/// The context libcrypto's function `name`, which takes nothing, answers; null if it has none.
fn context_from(name: &CStr) -> *mut c_void {
    match libcrypto::<unsafe extern "C" fn() -> *mut c_void>(name) {
        // SAFETY: both functions `name` stands for take nothing and answer a context or null.
        Some(function) => unsafe { function() },
        None => std::ptr::null_mut(),
    }
}

/// libcrypto's own definition of `name` (OpenSSL 3's symbol version), the next one after
/// Polis's. `F` is its C type.
fn libcrypto<F: Copy>(name: &CStr) -> Option<F> {
    // SAFETY: both names are NUL-terminated; dlvsym only looks the symbol up.
    let found = unsafe { libc::dlvsym(libc::RTLD_NEXT, name.as_ptr(), c"OPENSSL_3.0.0".as_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: F is a function pointer type, the size of the address dlvsym returned.
    Some(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&found) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealers_thread_shares_one_context_and_others_get_their_own() {
        // SAFETY: contexts from the functions under test, freed once each.
        unsafe {
            let own = [OSSL_LIB_CTX_new(), OSSL_LIB_CTX_new()];
            assert!(!own[0].is_null());
            assert_ne!(own[0], own[1], "a thread without a sealer shares a context");
            let sealing = Sealing::enter();
            let shared = [OSSL_LIB_CTX_new(), OSSL_LIB_CTX_new()];
            assert_eq!(shared[0], shared[1]);
            assert_eq!(
                shared[0],
                default_context(),
                "not libcrypto's default context"
            );
            OSSL_LIB_CTX_free(shared[0]);
            assert_eq!(
                OSSL_LIB_CTX_new(),
                shared[0],
                "the shared context was freed"
            );
            drop(sealing);
            let after = OSSL_LIB_CTX_new();
            assert_ne!(after, shared[0]);
            [own[0], own[1], after]
                .into_iter()
                .for_each(|c| OSSL_LIB_CTX_free(c));
        }
    }
}
