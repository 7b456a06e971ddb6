//! The node's recovery key: a P-256 signing key created by the TPM at enrolment, under the
//! storage primary and not bound to PCR 7, whose public part the cluster records. When PCR 7
//! changed and nothing unseals, it is what proves to a Curator which node asks for approval. Its
//! private part leaves the TPM only wrapped by the storage primary, so the files on the ESP
//! sign nothing on another TPM.

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::structures::{
    EccPoint, EccScheme, HashScheme, MaxBuffer, Private, Public, PublicBuilder,
    PublicEccParametersBuilder, Signature, SignatureScheme,
};
use tss_esapi::traits::{Marshall, UnMarshall};

use super::{command, with_empty_password, Primary, Sealer, TpmError};
use crate::tpm::policy::SIGNATURE_LEN;

/// A recovery key as the TPM created it: its public and (wrapped) private areas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryKey {
    /// TPM2B_PUBLIC, marshalled.
    pub public: Vec<u8>,
    /// TPM2B_PRIVATE, wrapped by the storage primary.
    pub private: Vec<u8>,
}

impl RecoveryKey {
    /// Its public key as an uncompressed P-256 point, as the cluster records it.
    pub fn point(&self) -> Result<Vec<u8>, TpmError> {
        let Public::Ecc { unique, .. } = self.public_area()? else {
            return Err(TpmError::BadAuthority(
                "the recovery key is not an ECC key".into(),
            ));
        };
        let mut point = vec![4u8];
        point.extend_from_slice(&left_padded(unique.x().value())?);
        point.extend_from_slice(&left_padded(unique.y().value())?);
        Ok(point)
    }

    /// Its public area, unmarshalled.
    fn public_area(&self) -> Result<Public, TpmError> {
        Public::unmarshall(&self.public)
            .map_err(|e| TpmError::BadAuthority(format!("recovery key public area: {e}")))
    }
}

impl Sealer {
    /// A new recovery key.
    pub fn create_recovery_key(&mut self) -> Result<RecoveryKey, TpmError> {
        let template = recovery_key_template().map_err(command("Create"))?;
        let (primary, _) = self.primary(Primary::Current)?;
        let created = self.in_salted_session(primary, None, |ctx| {
            ctx.create(primary, template.clone(), None, None, None, None)
        });
        self.release(primary);
        let created = created?;
        let created = created.map_err(command("Create"))?;
        Ok(RecoveryKey {
            public: created.out_public.marshall().map_err(command("Create"))?,
            private: created.out_private.value().to_vec(),
        })
    }

    /// Sign `message` (at most 1 KiB) with `key`: ECDSA over its SHA-256, as `r ‖ s`. The key is
    /// restricted, so the TPM hashes the message itself and refuses one that could pass for
    /// something it generated (a quote).
    pub fn sign_with_recovery_key(
        &mut self,
        key: &RecoveryKey,
        message: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let public = key.public_area()?;
        let private = Private::try_from(key.private.clone())
            .map_err(|e| TpmError::BadAuthority(format!("recovery key private area: {e}")))?;
        let data = MaxBuffer::try_from(message.to_vec()).map_err(command("Hash"))?;
        let (primary, _) = self.primary(Primary::Current)?;
        let loaded = with_empty_password(&mut self.ctx, |ctx| ctx.load(primary, private, public));
        self.release(primary);
        let loaded = loaded.map_err(|e| {
            TpmError::BadAuthority(format!(
                "the TPM refused to load the recovery key ({e}): it was created by another TPM, or altered"
            ))
        })?;
        let signed = self
            .ctx
            .hash(data, HashingAlgorithm::Sha256, Hierarchy::Owner)
            .map_err(command("Hash"))
            .and_then(|(digest, ticket)| {
                with_empty_password(&mut self.ctx, |ctx| {
                    ctx.sign(loaded, digest, SignatureScheme::Null, ticket)
                })
                .map_err(command("Sign"))
            });
        self.flush(loaded.into());
        match signed? {
            Signature::EcDsa(signature) => {
                let mut raw = left_padded(signature.signature_r().value())?.to_vec();
                raw.extend_from_slice(&left_padded(signature.signature_s().value())?);
                debug_assert_eq!(raw.len(), SIGNATURE_LEN);
                Ok(raw)
            }
            other => Err(TpmError::Command {
                op: "Sign",
                reason: format!("the TPM answered a {:?} signature", other.algorithm()),
            }),
        }
    }
}

/// A P-256 coordinate or scalar, which the TPM may answer without its leading zeros, as 32
/// bytes.
fn left_padded(value: &[u8]) -> Result<[u8; 32], TpmError> {
    let mut out = [0u8; 32];
    let start = 32usize
        .checked_sub(value.len())
        .ok_or_else(|| TpmError::Command {
            op: "Sign",
            reason: format!("a P-256 value of {} bytes", value.len()),
        })?;
    out[start..].copy_from_slice(value);
    Ok(out)
}

/// A restricted P-256 signing key, ECDSA with SHA-256, fixed to this TPM, empty auth (exempt
/// from dictionary-attack lockout, as it guards nothing), not bound to any PCR.
fn recovery_key_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_sign_encrypt(true)
        .with_restricted(true)
        .build()?;
    let parameters = PublicEccParametersBuilder::new()
        .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
        .with_curve(EccCurve::NistP256)
        .with_is_signing_key(true)
        .with_is_decryption_key(false)
        .with_restricted(true)
        .with_key_derivation_function_scheme(
            tss_esapi::structures::KeyDerivationFunctionScheme::Null,
        )
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}
