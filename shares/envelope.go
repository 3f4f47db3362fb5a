package shares

import (
	"bytes"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/crypto"
	crypto_pb "github.com/libp2p/go-libp2p/core/crypto/pb"
	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/crypto/chacha20poly1305"
	"google.golang.org/protobuf/proto"

	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/shares/pb"
)

// EnvelopeVersion is the version of the envelope format and of its key
// derivation. It is in the encoded envelope, the AEAD associated data and
// the HKDF inputs (rule S6).
//
// Version 2 binds the owner's split ID. Version 1 envelopes, which name no
// split, are refused with ErrEnvelopeVersion: the ledger could not tell
// their split from another one.
const EnvelopeVersion = 2

// envelopeDomain separates envelope keys and associated data from every
// other use of an identity key. Its suffix follows EnvelopeVersion.
const envelopeDomain = "p2pkey/envelope/v2"

// Size limits.
const (
	// MaxShareSize bounds the plaintext of an envelope. A share of a
	// 32-byte K is 34 bytes.
	MaxShareSize = 1024
	// MaxEnvelopeSize bounds an encoded envelope. A sealed 32-byte K share
	// is 214 bytes with two Ed25519 peer IDs and a 32-character cluster ID.
	MaxEnvelopeSize = 4096
	// MaxClusterIDLen bounds a cluster ID (the node uses 32 hex characters).
	MaxClusterIDLen = 128
	// maxPeerIDLen bounds a binary peer ID (an inlined RSA key is the
	// largest real one).
	maxPeerIDLen = 1024
)

// Binding is what an envelope is bound to. Every field is covered by the
// AEAD, so an envelope moved to another cluster, owner, generation, holder
// or split does not open.
type Binding struct {
	ClusterID  string
	Owner      peer.ID
	Generation uint64
	Holder     peer.ID
	// Split names the Split of the owner's K that the share belongs to
	// (NewSplitID draws one per split). Every envelope of one split carries
	// the same ID; the zero ID is invalid.
	Split generations.SplitID
}

// Validate checks that every field is present and well formed.
func (b Binding) Validate() error {
	if err := validateClusterID(b.ClusterID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidEnvelope, err)
	}
	if err := validatePeerID(b.Owner); err != nil {
		return fmt.Errorf("%w: owner: %w", ErrInvalidEnvelope, err)
	}
	if err := validatePeerID(b.Holder); err != nil {
		return fmt.Errorf("%w: holder: %w", ErrInvalidEnvelope, err)
	}
	if err := validateSplit(b.Split); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidEnvelope, err)
	}
	return nil
}

// NewSplitID draws a fresh random split ID from crypto/rand. It is never
// the zero ID.
func NewSplitID() generations.SplitID {
	var id generations.SplitID
	for id == (generations.SplitID{}) {
		_, _ = cryptoRand.Read(id[:]) // crypto/rand.Read never fails
	}
	return id
}

func validateSplit(id generations.SplitID) error {
	if id == (generations.SplitID{}) {
		return fmt.Errorf("%w: zero split ID", ErrZeroSplit)
	}
	return nil
}

func validateClusterID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("empty cluster ID")
	case len(id) > MaxClusterIDLen:
		return fmt.Errorf("cluster ID longer than %d bytes", MaxClusterIDLen)
	case !utf8.ValidString(id):
		return fmt.Errorf("cluster ID is not UTF-8")
	}
	return nil
}

func validatePeerID(id peer.ID) error {
	if len(id) == 0 || len(id) > maxPeerIDLen {
		return fmt.Errorf("peer ID of %d bytes", len(id))
	}
	if _, err := peer.IDFromBytes([]byte(id)); err != nil {
		return err
	}
	return nil
}

// associatedData is the canonical encoding of a binding that the AEAD
// authenticates. Length-prefixed, so no two bindings share an encoding:
//
//	"p2pkey/envelope/v1\x00"
//	u32 envelope version (big endian)
//	u16 len(clusterID) || clusterID
//	u16 len(owner)     || owner (binary peer ID)
//	u64 generation (big endian)
//	u16 len(holder)    || holder (binary peer ID)
//	16 bytes split
func (b Binding) associatedData(version uint32) []byte {
	a := make([]byte, 0, len(envelopeDomain)+1+4+3*2+len(b.ClusterID)+len(b.Owner)+8+len(b.Holder)+generations.SplitSize)
	a = append(a, envelopeDomain...)
	a = append(a, 0)
	a = binary.BigEndian.AppendUint32(a, version)
	a = appendField(a, []byte(b.ClusterID))
	a = appendField(a, []byte(b.Owner))
	a = binary.BigEndian.AppendUint64(a, b.Generation)
	a = appendField(a, []byte(b.Holder))
	a = append(a, b.Split[:]...)
	return a
}

func appendField(b, f []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
	return append(b, f...)
}

// sealingKey derives the owner's envelope key for a cluster:
//
//	HKDF-SHA256(ikm  = owner's Ed25519 private key bytes (priv.Raw()),
//	            salt = "p2pkey/envelope/v2",
//	            info = "p2pkey/envelope/v2\x00" || u16 len(clusterID) || clusterID
//	                   || u16 len(owner) || owner)
//
// Only the owner has the identity key, so only the owner can derive it. One
// key serves every generation, holder and split of (cluster, owner); the
// random 192-bit XChaCha20 nonce makes that safe, and the associated data
// binds the generation, the holder and the split. The caller must clear the
// key.
func sealingKey(priv crypto.PrivKey, clusterID string, owner peer.ID) ([]byte, error) {
	if priv == nil || priv.Type() != crypto_pb.KeyType_Ed25519 {
		return nil, ErrKeyType
	}
	raw, err := priv.Raw()
	if err != nil {
		return nil, fmt.Errorf("shares: identity key: %w", err)
	}
	defer clear(raw)
	info := make([]byte, 0, len(envelopeDomain)+1+4+len(clusterID)+len(owner))
	info = append(info, envelopeDomain...)
	info = append(info, 0)
	info = appendField(info, []byte(clusterID))
	info = appendField(info, []byte(owner))
	key, err := hkdf.Key(sha256.New, raw, []byte(envelopeDomain), string(info), chacha20poly1305.KeySize)
	if err != nil {
		return nil, fmt.Errorf("shares: hkdf: %w", err)
	}
	return key, nil
}

// Envelope is a share sealed by its owner with XChaCha20-Poly1305.
// Its binding is in clear so that a holder can check it; only the owner can
// open it.
type Envelope struct {
	Version    uint32
	Binding    Binding
	Nonce      []byte // chacha20poly1305.NonceSizeX bytes
	Ciphertext []byte // the sealed share and its tag
}

// Seal seals share for b.Holder with the owner's identity key. b.Owner must
// be owner's peer ID and b.Split the ID of the split the share comes from.
// rand supplies the nonce; nil means crypto/rand.
//
// share must be exactly a share that Split returned: Seal refuses anything
// else with ErrInvalidEnvelope, and a share of a threshold-1 split (which
// would be K itself) with ErrThresholdTooLow, so no envelope ever holds K
// whole (rule K1).
func Seal(owner crypto.PrivKey, b Binding, share []byte, rand io.Reader) (*Envelope, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	if len(share) == 0 || len(share) > MaxShareSize {
		return nil, fmt.Errorf("%w: share of %d bytes, want 1 to %d", ErrInvalidEnvelope, len(share), MaxShareSize)
	}
	if err := checkShare(share); err != nil {
		return nil, err
	}
	if err := checkOwner(owner, b.Owner); err != nil {
		return nil, err
	}
	if rand == nil {
		rand = cryptoRand
	}
	nonce := make([]byte, chacha20poly1305.NonceSizeX)
	if _, err := io.ReadFull(rand, nonce); err != nil {
		return nil, fmt.Errorf("shares: nonce: %w", err)
	}
	key, err := sealingKey(owner, b.ClusterID, b.Owner)
	if err != nil {
		return nil, err
	}
	aead, err := chacha20poly1305.NewX(key)
	clear(key)
	if err != nil {
		return nil, fmt.Errorf("shares: aead: %w", err)
	}
	ct := aead.Seal(nil, nonce, share, b.associatedData(EnvelopeVersion))
	return &Envelope{Version: EnvelopeVersion, Binding: b, Nonce: nonce, Ciphertext: ct}, nil
}

var cryptoRand = rand.Reader

// Open checks and opens an envelope with its owner's identity key, and
// returns the share and the binding it was sealed for. The caller should
// clear the share after use. A key other than the owner's (a holder's)
// gets ErrNotOwner; a tampered or moved envelope gets ErrOpenFailed.
func Open(owner crypto.PrivKey, env *Envelope) (share []byte, b Binding, err error) {
	if err := env.validate(); err != nil {
		return nil, Binding{}, err
	}
	if err := checkOwner(owner, env.Binding.Owner); err != nil {
		return nil, Binding{}, err
	}
	key, err := sealingKey(owner, env.Binding.ClusterID, env.Binding.Owner)
	if err != nil {
		return nil, Binding{}, err
	}
	aead, err := chacha20poly1305.NewX(key)
	clear(key)
	if err != nil {
		return nil, Binding{}, fmt.Errorf("shares: aead: %w", err)
	}
	share, err = aead.Open(nil, env.Nonce, env.Ciphertext, env.Binding.associatedData(env.Version))
	if err != nil {
		return nil, Binding{}, ErrOpenFailed
	}
	return share, env.Binding, nil
}

func checkOwner(priv crypto.PrivKey, owner peer.ID) error {
	if priv == nil || priv.Type() != crypto_pb.KeyType_Ed25519 {
		return ErrKeyType
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		return fmt.Errorf("shares: identity key: %w", err)
	}
	if id != owner {
		return ErrNotOwner
	}
	return nil
}

// validate checks everything that can be checked without the key.
func (e *Envelope) validate() error {
	if e == nil {
		return fmt.Errorf("%w: nil", ErrInvalidEnvelope)
	}
	if e.Version != EnvelopeVersion {
		return versionError(e.Version)
	}
	if err := e.Binding.Validate(); err != nil {
		return err
	}
	if len(e.Nonce) != chacha20poly1305.NonceSizeX {
		return fmt.Errorf("%w: nonce of %d bytes", ErrInvalidEnvelope, len(e.Nonce))
	}
	if n := len(e.Ciphertext) - chacha20poly1305.Overhead; n < 1 || n > MaxShareSize {
		return fmt.Errorf("%w: ciphertext of %d bytes", ErrInvalidEnvelope, len(e.Ciphertext))
	}
	return nil
}

// MarshalBinary returns the envelope's canonical encoding: the
// deterministic protobuf encoding of pb.Envelope. It refuses an invalid
// envelope.
func (e *Envelope) MarshalBinary() ([]byte, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	m := &pb.Envelope{
		Version:    e.Version,
		ClusterId:  e.Binding.ClusterID,
		Owner:      []byte(e.Binding.Owner),
		Generation: e.Binding.Generation,
		Holder:     []byte(e.Binding.Holder),
		Nonce:      e.Nonce,
		Ciphertext: e.Ciphertext,
		Split:      e.Binding.Split[:],
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidEnvelope, err)
	}
	return b, nil
}

// ParseEnvelope decodes and validates an encoded envelope. It accepts only
// the canonical encoding (the bytes MarshalBinary gives back), so the
// digest of the bytes is the digest of the envelope.
func ParseEnvelope(data []byte) (*Envelope, error) {
	if len(data) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: envelope of %d bytes, limit %d", ErrTooLarge, len(data), MaxEnvelopeSize)
	}
	var m pb.Envelope
	if err := proto.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidEnvelope, err)
	}
	if m.GetVersion() != EnvelopeVersion {
		return nil, versionError(m.GetVersion())
	}
	if n := len(m.GetSplit()); n != generations.SplitSize {
		return nil, fmt.Errorf("%w: split ID of %d bytes, want %d", ErrInvalidEnvelope, n, generations.SplitSize)
	}
	e := &Envelope{
		Version: m.GetVersion(),
		Binding: Binding{
			ClusterID:  m.GetClusterId(),
			Owner:      peer.ID(m.GetOwner()),
			Generation: m.GetGeneration(),
			Holder:     peer.ID(m.GetHolder()),
			Split:      generations.SplitID(m.GetSplit()),
		},
		Nonce:      m.GetNonce(),
		Ciphertext: m.GetCiphertext(),
	}
	again, err := e.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(again, data) {
		return nil, fmt.Errorf("%w: not in canonical encoding", ErrInvalidEnvelope)
	}
	return e, nil
}

// Digest is the SHA-256 of the envelope's canonical encoding: what a
// holder's receipt signs. An envelope that cannot be encoded (one that Seal
// and ParseEnvelope would never return) has the all-zero digest, which
// SignReceipt refuses.
func Digest(env *Envelope) [32]byte {
	b, err := env.MarshalBinary()
	if err != nil {
		return [32]byte{}
	}
	return sha256.Sum256(b)
}

// versionError is the refusal of an envelope of another version.
func versionError(v uint32) error {
	if v < EnvelopeVersion {
		return fmt.Errorf("%w: %w: version %d names no split and is no longer accepted; this build reads version %d",
			ErrInvalidEnvelope, ErrEnvelopeVersion, v, EnvelopeVersion)
	}
	return fmt.Errorf("%w: %w: version %d, this build reads version %d", ErrInvalidEnvelope, ErrEnvelopeVersion, v, EnvelopeVersion)
}
