# pragma version ~=0.4.3
"""
@title ECVRF-EDWARDS25519-SHA512-TAI verifier (RFC 9381, suite 0x03) in EVM code
@notice For chains without flockd's VRF precompile. Calldata is raw, not ABI:
            pk (32) || pi (80) || alpha (0..MAX_ALPHA bytes)
        A valid proof returns beta (64 raw bytes); anything else reverts. The
        decisions are those of flockd.vrf.verify (validate_key, canonical
        encodings, s < L, five-point challenge). Spec: protocol/spec/contracts.md.
        Points are checked on the curve but not for subgroup membership, as the RFC
        requires; the addition formulas are complete, so torsion needs no special case.
        Square roots and inverses use the modexp precompile (0x05).
"""

# edwards25519: -x^2 + y^2 = 1 + D x^2 y^2 over GF(P); L is the prime subgroup order
P: constant(uint256) = 2**255 - 19
L: constant(uint256) = 2**252 + 27742317777372353535851937790883648493
D: constant(uint256) = 37095705934669439343138083508754565189542113879843219016388785533085940283555  # -121665 / 121666
D2: constant(uint256) = 16295367250680780974490674513165176452449235426866156013048779062215315747161  # 2 * D
SQRT_M1: constant(uint256) = 19681161376707505956807079304988542015446066515923890162744021073123829784752  # 2**((P - 1) // 4)
BASE_X: constant(uint256) = 15112221349535400772501151409588531511454012693041857206046113283949847762202
BASE_Y: constant(uint256) = 46316835694926478169428394003475163141307993866256225615783033603165251855960  # 4 / 5: the base point B
MODEXP: constant(address) = 0x0000000000000000000000000000000000000005

PK_LEN: constant(uint256) = 32
PROOF_LEN: constant(uint256) = 80
HEAD_LEN: constant(uint256) = PK_LEN + PROOF_LEN
# Keeps every SHA-512 input within two blocks: 2 + 32 + 128 + 2 <= 2 * 128 - 17.
MAX_ALPHA: constant(uint256) = 128
MAX_MSG_WORDS: constant(uint256) = 8  # 32-byte words in two SHA-512 blocks
TAI_TRIES: constant(uint256) = 256
SCALAR_BITS: constant(uint256) = 253  # s < L < 2**253, c < 2**128
SUITE: constant(uint256) = 3
WORD: constant(uint256) = 32

M64: constant(uint256) = 2**64 - 1
M128: constant(uint256) = 2**128 - 1
# 0x00FF00FF..., 0x0000FFFF..., ...: every other 8/16/32/64-bit lane
LANES_8: constant(uint256) = max_value(uint256) // (2**16 - 1) * (2**8 - 1)
LANES_16: constant(uint256) = max_value(uint256) // (2**32 - 1) * (2**16 - 1)
LANES_32: constant(uint256) = max_value(uint256) // (2**64 - 1) * (2**32 - 1)
LANES_64: constant(uint256) = max_value(uint256) // (2**128 - 1) * (2**64 - 1)
SHA512_K: constant(uint256[80]) = [
    4794697086780616226,
    8158064640168781261,
    13096744586834688815,
    16840607885511220156,
    4131703408338449720,
    6480981068601479193,
    10538285296894168987,
    12329834152419229976,
    15566598209576043074,
    1334009975649890238,
    2608012711638119052,
    6128411473006802146,
    8268148722764581231,
    9286055187155687089,
    11230858885718282805,
    13951009754708518548,
    16472876342353939154,
    17275323862435702243,
    1135362057144423861,
    2597628984639134821,
    3308224258029322869,
    5365058923640841347,
    6679025012923562964,
    8573033837759648693,
    10970295158949994411,
    12119686244451234320,
    12683024718118986047,
    13788192230050041572,
    14330467153632333762,
    15395433587784984357,
    489312712824947311,
    1452737877330783856,
    2861767655752347644,
    3322285676063803686,
    5560940570517711597,
    5996557281743188959,
    7280758554555802590,
    8532644243296465576,
    9350256976987008742,
    10552545826968843579,
    11727347734174303076,
    12113106623233404929,
    14000437183269869457,
    14369950271660146224,
    15101387698204529176,
    15463397548674623760,
    17586052441742319658,
    1182934255886127544,
    1847814050463011016,
    2177327727835720531,
    2830643537854262169,
    3796741975233480872,
    4115178125766777443,
    5681478168544905931,
    6601373596472566643,
    7507060721942968483,
    8399075790359081724,
    8693463985226723168,
    9568029438360202098,
    10144078919501101548,
    10430055236837252648,
    11840083180663258601,
    13761210420658862357,
    14299343276471374635,
    14566680578165727644,
    15097957966210449927,
    16922976911328602910,
    17689382322260857208,
    500013540394364858,
    748580250866718886,
    1242879168328830382,
    1977374033974150939,
    2944078676154940804,
    3659926193048069267,
    4368137639120453308,
    4836135668995329356,
    5532061633213252278,
    6448918945643986474,
    6902733635092675308,
    7801388544844847127
]


struct Point:  # extended coordinates: x = X/Z, y = Y/Z, x*y = T/Z
    x: uint256
    y: uint256
    z: uint256
    t: uint256


# ---------------------------------------------------------------- SHA-512

@internal
@pure
def _put(w: uint256[MAX_MSG_WORDS], pos: uint256, v: uint256, nbytes: uint256) -> uint256[MAX_MSG_WORDS]:
    """w with the low nbytes bytes of v written big-endian at byte offset pos (w is zero there)"""
    x: uint256 = v << (256 - 8 * nbytes)
    i: uint256 = pos >> 5
    r: uint256 = (pos & 31) << 3
    w[i] |= x >> r
    if r + 8 * nbytes > 256:
        w[i + 1] |= x << (256 - r)
    return w


@internal
@pure
def _compress(state: uint256[8], words: uint256[16]) -> uint256[8]:
    k: uint256[80] = SHA512_K
    w: uint256[80] = empty(uint256[80])
    for i: uint256 in range(16):
        w[i] = words[i]
    for i: uint256 in range(16, 80):
        # rotations of a 64-bit word read off the word doubled into 128 bits
        x: uint256 = w[i - 15] | (w[i - 15] << 64)
        s0: uint256 = ((x >> 1) ^ (x >> 8)) & M64 ^ (w[i - 15] >> 7)
        x = w[i - 2] | (w[i - 2] << 64)
        s1: uint256 = ((x >> 19) ^ (x >> 61)) & M64 ^ (w[i - 2] >> 6)
        w[i] = unsafe_add(unsafe_add(w[i - 16], s0), unsafe_add(w[i - 7], s1)) & M64
    a: uint256 = state[0]
    b: uint256 = state[1]
    c: uint256 = state[2]
    d: uint256 = state[3]
    e: uint256 = state[4]
    f: uint256 = state[5]
    g: uint256 = state[6]
    h: uint256 = state[7]
    for i: uint256 in range(80):
        x: uint256 = e | (e << 64)
        t1: uint256 = unsafe_add(
            unsafe_add(h, ((x >> 14) ^ (x >> 18) ^ (x >> 41)) & M64),
            unsafe_add(unsafe_add((e & f) ^ ((e ^ M64) & g), k[i]), w[i]),
        )
        x = a | (a << 64)
        t2: uint256 = unsafe_add(((x >> 28) ^ (x >> 34) ^ (x >> 39)) & M64, (a & b) ^ (a & c) ^ (b & c))
        h = g
        g = f
        f = e
        e = unsafe_add(d, t1) & M64
        d = c
        c = b
        b = a
        a = unsafe_add(t1, t2) & M64
    return [
        unsafe_add(state[0], a) & M64, unsafe_add(state[1], b) & M64,
        unsafe_add(state[2], c) & M64, unsafe_add(state[3], d) & M64,
        unsafe_add(state[4], e) & M64, unsafe_add(state[5], f) & M64,
        unsafe_add(state[6], g) & M64, unsafe_add(state[7], h) & M64,
    ]


@internal
@pure
def _sha512(message: uint256[MAX_MSG_WORDS], length: uint256) -> (uint256, uint256):
    """SHA-512 of the first length (<= 239) bytes of message (big-endian words, zero beyond);
    the digest as two big-endian 32-byte words"""
    w: uint256[MAX_MSG_WORDS] = self._put(message, length, 128, 1)
    n_blocks: uint256 = (length + 17 + 127) >> 7
    w[4 * n_blocks - 1] |= length << 3
    state: uint256[8] = [
        7640891576956012808, 13503953896175478587, 4354685564936845355, 11912009170470909681,
        5840696475078001361, 11170449401992604703, 2270897969802886507, 6620516959819538809,
    ]
    for blk: uint256 in range(2):
        if blk >= n_blocks:
            break
        words: uint256[16] = empty(uint256[16])
        for j: uint256 in range(4):
            v: uint256 = w[4 * blk + j]
            words[4 * j] = v >> 192
            words[4 * j + 1] = (v >> 128) & M64
            words[4 * j + 2] = (v >> 64) & M64
            words[4 * j + 3] = v & M64
        state = self._compress(state, words)
    return (
        (state[0] << 192) | (state[1] << 128) | (state[2] << 64) | state[3],
        (state[4] << 192) | (state[5] << 128) | (state[6] << 64) | state[7],
    )


# ---------------------------------------------------------------- field and curve

@internal
@pure
def _bswap(v: uint256) -> uint256:
    """byte order reversed: encodings are little-endian, EVM words big-endian"""
    x: uint256 = ((v >> 8) & LANES_8) | ((v & LANES_8) << 8)
    x = ((x >> 16) & LANES_16) | ((x & LANES_16) << 16)
    x = ((x >> 32) & LANES_32) | ((x & LANES_32) << 32)
    x = ((x >> 64) & LANES_64) | ((x & LANES_64) << 64)
    return (x >> 128) | (x << 128)


@internal
@view
def _pow(b: uint256, e: uint256) -> uint256:
    """b**e mod p by the modexp precompile (EIP-198)"""
    out: Bytes[32] = raw_call(
        MODEXP, abi_encode(WORD, WORD, WORD, b, e, P), max_outsize=32, is_static_call=True
    )
    return extract32(out, 0, output_type=uint256)


@internal
@pure
def _add(p: Point, q: Point) -> Point:
    """add-2008-hwcd-3: complete on edwards25519 (a = -1, d not a square), torsion included"""
    a: uint256 = uint256_mulmod(
        uint256_addmod(p.y, unsafe_sub(P, p.x), P), uint256_addmod(q.y, unsafe_sub(P, q.x), P), P
    )
    b: uint256 = uint256_mulmod(uint256_addmod(p.y, p.x, P), uint256_addmod(q.y, q.x, P), P)
    c: uint256 = uint256_mulmod(uint256_mulmod(p.t, D2, P), q.t, P)
    d: uint256 = uint256_mulmod(uint256_addmod(p.z, p.z, P), q.z, P)
    e: uint256 = uint256_addmod(b, unsafe_sub(P, a), P)
    f: uint256 = uint256_addmod(d, unsafe_sub(P, c), P)
    g: uint256 = uint256_addmod(d, c, P)
    h: uint256 = uint256_addmod(b, a, P)
    return Point(
        x=uint256_mulmod(e, f, P), y=uint256_mulmod(g, h, P),
        z=uint256_mulmod(f, g, P), t=uint256_mulmod(e, h, P),
    )


@internal
@pure
def _dbl(p: Point) -> Point:
    """dbl-2008-hwcd with every intermediate negated (as ref10 does)"""
    a: uint256 = uint256_mulmod(p.x, p.x, P)
    b: uint256 = uint256_mulmod(p.y, p.y, P)
    c: uint256 = uint256_mulmod(p.z, p.z, P)
    c = uint256_addmod(c, c, P)
    h: uint256 = uint256_addmod(a, b, P)
    xy: uint256 = uint256_addmod(p.x, p.y, P)
    e: uint256 = uint256_addmod(h, unsafe_sub(P, uint256_mulmod(xy, xy, P)), P)
    g: uint256 = uint256_addmod(a, unsafe_sub(P, b), P)
    f: uint256 = uint256_addmod(c, g, P)
    return Point(
        x=uint256_mulmod(e, f, P), y=uint256_mulmod(g, h, P),
        z=uint256_mulmod(f, g, P), t=uint256_mulmod(e, h, P),
    )


@internal
@pure
def _times_cofactor(p: Point) -> Point:
    return self._dbl(self._dbl(self._dbl(p)))


@internal
@pure
def _neg(p: Point) -> Point:
    return Point(x=unsafe_sub(P, p.x) % P, y=p.y, z=p.z, t=unsafe_sub(P, p.t) % P)


@internal
@pure
def _is_identity(p: Point) -> bool:
    return p.x == 0 and p.y == p.z


@internal
@pure
def _double_mul(s: uint256, p: Point, c: uint256, q: Point) -> Point:
    """s*p + c*q for s, c < 2**SCALAR_BITS (Shamir: one doubling chain)"""
    pq: Point = self._add(p, q)
    r: Point = Point(x=0, y=1, z=1, t=0)
    for i: uint256 in range(SCALAR_BITS):
        r = self._dbl(r)
        bit: uint256 = SCALAR_BITS - 1 - i
        if (s >> bit) & 1 == 1:
            if (c >> bit) & 1 == 1:
                r = self._add(r, pq)
            else:
                r = self._add(r, p)
        elif (c >> bit) & 1 == 1:
            r = self._add(r, q)
    return r


@internal
@view
def _decode(word: uint256) -> (bool, Point):
    """RFC 8032 5.1.3 decoding of the 32 bytes in word (big-endian), any subgroup;
    False for a non-canonical encoding or a y with no x on the curve"""
    n: uint256 = self._bswap(word)
    y: uint256 = n & (2**255 - 1)
    sign: uint256 = n >> 255
    if y >= P:
        return False, empty(Point)
    yy: uint256 = uint256_mulmod(y, y, P)
    u: uint256 = uint256_addmod(yy, P - 1, P)
    v: uint256 = uint256_addmod(uint256_mulmod(D, yy, P), 1, P)
    v3: uint256 = uint256_mulmod(uint256_mulmod(v, v, P), v, P)
    uv7: uint256 = uint256_mulmod(u, uint256_mulmod(uint256_mulmod(v3, v3, P), v, P), P)
    x: uint256 = uint256_mulmod(uint256_mulmod(u, v3, P), self._pow(uv7, (P - 5) // 8), P)
    vxx: uint256 = uint256_mulmod(v, uint256_mulmod(x, x, P), P)
    if vxx != u:
        if vxx != unsafe_sub(P, u):
            return False, empty(Point)
        x = uint256_mulmod(x, SQRT_M1, P)
    if x == 0 and sign == 1:
        return False, empty(Point)
    if x & 1 != sign:
        x = P - x
    return True, Point(x=x, y=y, z=1, t=uint256_mulmod(x, y, P))


@internal
@view
def _encode(p: Point) -> uint256:
    """the canonical 32-byte encoding of p, as a big-endian word"""
    zinv: uint256 = self._pow(p.z, P - 2)
    x: uint256 = uint256_mulmod(p.x, zinv, P)
    y: uint256 = uint256_mulmod(p.y, zinv, P)
    return self._bswap(y | ((x & 1) << 255))


# ---------------------------------------------------------------- RFC 9381

@internal
@view
def _word(offset: uint256) -> uint256:
    return convert(slice(msg.data, offset, 32), uint256)


@internal
@view
def _hash_to_curve(pk: uint256, alpha_len: uint256) -> (Point, uint256):
    """5.4.1.1 try-and-increment on suite || 0x01 || pk || alpha || ctr || 0x00: the
    first candidate that decodes (no subgroup check) and is not of small order, times 8"""
    m: uint256[MAX_MSG_WORDS] = self._put(empty(uint256[MAX_MSG_WORDS]), 0, SUITE * 256 + 1, 2)
    m = self._put(m, 2, pk, 32)
    # alpha straight from calldata: whole words, then the tail masked off the last word
    for k: uint256 in range(MAX_ALPHA // 32):
        if 32 * (k + 1) > alpha_len:
            break
        m = self._put(m, 34 + 32 * k, self._word(HEAD_LEN + 32 * k), 32)
    tail: uint256 = alpha_len & 31
    if tail > 0:
        last: uint256 = self._word(len(msg.data) - 32) & ((1 << (8 * tail)) - 1)
        m = self._put(m, 34 + alpha_len - tail, last, tail)
    for ctr: uint256 in range(TAI_TRIES):
        # ctr || 0x00 as a 2-byte write over the zero bytes left for them
        hi: uint256 = 0
        lo: uint256 = 0
        hi, lo = self._sha512(self._put(m, 34 + alpha_len, ctr << 8, 2), 36 + alpha_len)
        ok: bool = False
        candidate: Point = empty(Point)
        ok, candidate = self._decode(hi)
        if not ok:
            continue
        h: Point = self._times_cofactor(candidate)
        if not self._is_identity(h):
            return h, self._encode(h)
    raise "no point in 256 tries"


@external
@view
@raw_return
def __default__() -> Bytes[64]:
    """pk (32) || pi (80) || alpha -> beta (64), or revert"""
    size: uint256 = len(msg.data)
    assert size >= HEAD_LEN and size <= HEAD_LEN + MAX_ALPHA, "input length"

    pk: uint256 = self._word(0)
    ok: bool = False
    y: Point = empty(Point)
    ok, y = self._decode(pk)
    assert ok, "public key not a curve point"
    assert not self._is_identity(self._times_cofactor(y)), "public key of small order"

    gamma_enc: uint256 = self._word(PK_LEN)
    gamma: Point = empty(Point)
    ok, gamma = self._decode(gamma_enc)
    assert ok, "gamma not a curve point"
    cs: uint256 = self._word(PK_LEN + 32)  # c (16) || first half of s
    c: uint256 = self._bswap(cs) & M128
    s: uint256 = self._bswap(self._word(PK_LEN + 48))
    assert s < L, "s not reduced"

    h: Point = empty(Point)
    h_enc: uint256 = 0
    h, h_enc = self._hash_to_curve(pk, size - HEAD_LEN)
    # U = s*B - c*Y, V = s*H - c*Gamma
    base: Point = Point(x=BASE_X, y=BASE_Y, z=1, t=uint256_mulmod(BASE_X, BASE_Y, P))
    u: Point = self._double_mul(s, base, c, self._neg(y))
    v: Point = self._double_mul(s, h, c, self._neg(gamma))

    m: uint256[MAX_MSG_WORDS] = self._put(empty(uint256[MAX_MSG_WORDS]), 0, SUITE * 256 + 2, 2)
    m = self._put(m, 2, pk, 32)
    m = self._put(m, 34, h_enc, 32)
    m = self._put(m, 66, gamma_enc, 32)
    m = self._put(m, 98, self._encode(u), 32)
    m = self._put(m, 130, self._encode(v), 32)
    hi: uint256 = 0
    lo: uint256 = 0
    hi, lo = self._sha512(m, 163)  # ... || V || 0x00
    assert hi >> 128 == cs >> 128, "proof mismatch"

    m = self._put(empty(uint256[MAX_MSG_WORDS]), 0, SUITE * 256 + 3, 2)
    m = self._put(m, 2, self._encode(self._times_cofactor(gamma)), 32)
    hi, lo = self._sha512(m, 35)  # ... || 0x00
    return concat(convert(hi, bytes32), convert(lo, bytes32))
