//! TLS 1.3 with self-signed certificates on both ends and no CA: each side pins the other's
//! thumbprint instead (contract 6).

use crate::{Identity, matches_thumbprint, thumbprint_sha256};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig, SignatureScheme,
};
use std::sync::Arc;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Decides whether a peer's certificate (DER) is acceptable.
pub type Pin = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// A pin that accepts the certificates whose thumbprint is one of `thumbprints`.
pub fn pin_thumbprints(thumbprints: Vec<String>) -> Pin {
    Arc::new(move |der: &[u8]| thumbprints.iter().any(|t| matches_thumbprint(der, t)))
}

#[derive(Debug)]
struct PinnedServer {
    pin: PinDebug,
    algorithms: WebPkiSupportedAlgorithms,
}

struct PinDebug(Pin);

impl std::fmt::Debug for PinDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin")
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if (self.pin.0)(end_entity) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::General(format!(
                "the peer's certificate {} is not trusted",
                thumbprint_sha256(end_entity)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[derive(Debug)]
struct PinnedClient {
    pin: PinDebug,
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClient {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        if (self.pin.0)(end_entity) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(Error::General(format!(
                "the client certificate {} is not trusted",
                thumbprint_sha256(end_entity)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS 1.3 server. With `mandatory`, a client without a certificate that `pin` accepts is refused
/// in the handshake; without it, clients may come without one (the server's comms port answers
/// plain HTTPS probes) and are pinned after the handshake.
pub fn server_config(
    identity: &Identity,
    pin: Pin,
    mandatory: bool,
) -> Result<Arc<ServerConfig>, Error> {
    let verifier = Arc::new(PinnedClient {
        pin: PinDebug(pin),
        mandatory,
        algorithms: algorithms(),
    });
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![identity.cert_der.clone()],
            identity.key_der.clone_key(),
        )?;
    Ok(Arc::new(config))
}

/// A TLS 1.3 client that presents `identity` and accepts only a server certificate `pin` accepts.
pub fn client_config(identity: &Identity, pin: Pin) -> Result<Arc<ClientConfig>, Error> {
    let verifier = Arc::new(PinnedServer {
        pin: PinDebug(pin),
        algorithms: algorithms(),
    });
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            vec![identity.cert_der.clone()],
            identity.key_der.clone_key(),
        )?;
    Ok(Arc::new(config))
}

/// A client that presents no certificate and shows the server's certificate to `pin`: only for
/// reading a peer's thumbprint (`workers/discover`), never for work.
pub fn probe_config(pin: Pin) -> Result<Arc<ClientConfig>, Error> {
    let verifier = Arc::new(PinnedServer {
        pin: PinDebug(pin),
        algorithms: algorithms(),
    });
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name a client sends; certificates are pinned by thumbprint, never by name.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("muster").expect("a valid DNS name")
}
