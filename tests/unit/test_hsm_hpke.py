"""HPKE open from a DH callback (node.hsm.hpke): the RFC 9180 test vector of its suite, and
interoperation with the ``cryptography`` implementation both ways."""

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec

from node.hsm import hpke, keys
from node.hsm.base import UnsealFailed

# RFC 9180, A.3.1: DHKEM(P-256, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode; A.3.1.1,
# the encryption with sequence number 0.
RFC_INFO = bytes.fromhex("4f6465206f6e2061204772656369616e2055726e")
RFC_SK_R = bytes.fromhex("f3ce7fdae57e1a310d87f1ebbde6f328be0a99cdbcadf4d6589cf29de4b8ffd2")
RFC_PK_R = bytes.fromhex(
    "04fe8c19ce0905191ebc298a9245792531f26f0cece2460639e8bc39cb7f706a82"
    "6a779b4cf969b8a0e539c7f62fb3d30ad6aa8f80e30f1d128aafd68a2ce72ea0"
)
RFC_ENC = bytes.fromhex(
    "04a92719c6195d5085104f469a8b9814d5838ff72b60501e2c4466e5e67b325ac9"
    "8536d7b61a1af4b78e5b7f951c0900be863c403ce65c9bfcb9382657222d18c4"
)
RFC_AAD = bytes.fromhex("436f756e742d30")
RFC_PT = bytes.fromhex("4265617574792069732074727574682c20747275746820626561757479")
RFC_CT = bytes.fromhex(
    "5ad590bb8baa577f8619db35a36311226a896e7342a6d836d8b7bcd2f20b6c7f9076ac232e3ab2523f39513434"
)


def _recipient(private: ec.EllipticCurvePrivateKey):
    """The recipient's public point and its DH callback, as a token would offer it."""

    def dh(point: bytes) -> bytes:
        return private.exchange(ec.ECDH(), keys.p256_public(point))

    return keys.p256_point(private.public_key()), dh


def test_opens_the_rfc_9180_test_vector():
    private = ec.derive_private_key(int.from_bytes(RFC_SK_R, "big"), ec.SECP256R1())
    public, dh = _recipient(private)
    assert public == RFC_PK_R
    assert hpke.open_sealed(dh, public, RFC_ENC + RFC_CT, RFC_INFO, RFC_AAD) == RFC_PT
    with pytest.raises(UnsealFailed):
        hpke.open_sealed(dh, public, RFC_ENC + RFC_CT, RFC_INFO)  # without its aad


@pytest.mark.parametrize("plaintext", [b"", b"k", bytes(range(256)) * 9])
@pytest.mark.parametrize("info", [b"", b"hsmfleet/v1/key-wrap\n{}", bytes(300)])
def test_opens_what_cryptography_seals(plaintext, info):
    private = ec.generate_private_key(ec.SECP256R1())
    public, dh = _recipient(private)
    sealed = hpke.SUITE.encrypt(plaintext, private.public_key(), info=info)
    assert hpke.open_sealed(dh, public, sealed, info) == plaintext
    assert hpke.seal(public, plaintext, info) != sealed  # a fresh encapsulation each time
    assert hpke.SUITE.decrypt(hpke.seal(public, plaintext, info), private, info=info) == plaintext


def test_refuses_what_cryptography_refuses():
    private = ec.generate_private_key(ec.SECP256R1())
    public, dh = _recipient(private)
    other = ec.generate_private_key(ec.SECP256R1())
    other_public, other_dh = _recipient(other)
    sealed = hpke.SUITE.encrypt(b"key material", private.public_key(), info=b"context")
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    bad_point = bytearray(sealed)
    bad_point[10] ^= 1
    cases = [
        (dh, public, sealed, b"other context", private),
        (dh, public, bytes(flipped), b"context", private),
        (dh, public, sealed[:-1], b"context", private),
        (dh, public, sealed[: hpke.ENC_BYTES + 15], b"context", private),
        (dh, public, bytes(bad_point), b"context", private),
        (other_dh, other_public, sealed, b"context", other),
    ]
    for open_dh, open_public, data, info, key in cases:
        with pytest.raises(UnsealFailed):
            hpke.open_sealed(open_dh, open_public, data, info)
        with pytest.raises((InvalidTag, ValueError)):
            hpke.SUITE.decrypt(data, key, info=info)
