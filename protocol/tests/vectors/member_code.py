# Independent reference for the ISQ2 member code: Python's `cryptography` signs, our own
# RFC 9285 Base45 encodes; the Rust side must verify and parse exactly these.
import hashlib, struct
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives import hashes, serialization

A = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
def b45(data):
    out = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        e, n = n % 45, n // 45
        d, c = n % 45, n // 45
        out += [A[e], A[d], A[c]]
    if len(data) % 2:
        n = data[-1]
        out += [A[n % 45], A[n // 45]]
    return "".join(out)

assert b45(b"AB") == "BB8" and b45(b"Hello!!") == "%69 VD92EX0" and b45(b"ietf!") == "QED8WEX0"

def code(pub, step, sign):
    kid = hashlib.sha256(pub).digest()[:8]
    msg = b"instore-code-v2" + kid + struct.pack(">I", step)
    sig = sign(msg)
    return kid, "ISQ2:" + b45(bytes([2]) + kid + struct.pack(">I", step) + sig)

step = 59_000_000
# Deterministic private keys so the vectors can be regenerated and compared.
p = ec.derive_private_key(int.from_bytes(hashlib.sha256(b"instore-es256-vector").digest(), "big"), ec.SECP256R1())
ppub = p.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
def es256(m):
    r, s = decode_dss_signature(p.sign(m, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")
e = ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"instore-ed25519-vector").digest())
epub = e.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
for name, pub, sign in [("ES256", ppub, es256), ("Ed25519", epub, e.sign)]:
    kid, c = code(pub, step, sign)
    print(name, pub.hex(), kid.hex(), step, c, len(c))
# The PKCS#8 of each private key (for the provisioning tool's key file tests).
print("es256_pkcs8", p.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).hex())
