package node

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/node/pb"
	"google.golang.org/protobuf/proto"
)

// invitePrefix starts every invite token; the version is part of it.
const invitePrefix = "p2pkey-invite-v1:"

// maxInviteLen bounds a token before it is decoded.
const maxInviteLen = 8 << 10

// ErrBadInvite is returned for a token that cannot be decoded.
var ErrBadInvite = errors.New("malformed invite")

// Invite is a decoded invite token.
type Invite struct {
	ClusterID string
	Secret    []byte
	ExpiresAt time.Time
	Addrs     []string
	// Relays are members that relay for nodes behind NAT (rule N1).
	Relays []string
}

// Hash is the SHA-256 of the secret: all the ledger ever stores (rule J1).
func (i Invite) Hash() []byte {
	h := sha256.Sum256(i.Secret)
	return h[:]
}

// Key returns the Ed25519 key pair the secret seeds: the ledger stores the
// public half, and the joiner proves it holds the invite by signing its
// join with the private half (generations.InviteKey).
func (i Invite) Key() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return generations.InviteKey(i.Secret)
}

func newInvite(clusterID string, ttl time.Duration, addrs []string, now time.Time) (Invite, error) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return Invite{}, err
	}
	return Invite{ClusterID: clusterID, Secret: secret, ExpiresAt: now.Add(ttl), Addrs: addrs}, nil
}

// Encode renders the invite as a printable token.
func (i Invite) Encode() string {
	b, _ := proto.Marshal(&pb.Invite{
		Version: 1, ClusterId: i.ClusterID, Secret: i.Secret,
		ExpiresAt: i.ExpiresAt.UnixNano(), Addrs: i.Addrs, Relays: i.Relays,
	})
	return invitePrefix + base64.RawURLEncoding.EncodeToString(b)
}

// DecodeInvite parses a token made by Invite.Encode.
func DecodeInvite(token string) (Invite, error) {
	token = strings.TrimSpace(token)
	if len(token) > maxInviteLen {
		return Invite{}, fmt.Errorf("%w: longer than %d bytes", ErrBadInvite, maxInviteLen)
	}
	body, ok := strings.CutPrefix(token, invitePrefix)
	if !ok {
		return Invite{}, fmt.Errorf("%w: it must start with %q", ErrBadInvite, invitePrefix)
	}
	raw, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil {
		return Invite{}, fmt.Errorf("%w: %v", ErrBadInvite, err)
	}
	var m pb.Invite
	if err := proto.Unmarshal(raw, &m); err != nil {
		return Invite{}, fmt.Errorf("%w: %v", ErrBadInvite, err)
	}
	if m.GetVersion() != 1 {
		return Invite{}, fmt.Errorf("%w: version %d is not supported", ErrBadInvite, m.GetVersion())
	}
	if len(m.GetSecret()) != 32 {
		return Invite{}, fmt.Errorf("%w: secret has %d bytes, want 32", ErrBadInvite, len(m.GetSecret()))
	}
	if m.GetClusterId() == "" {
		return Invite{}, fmt.Errorf("%w: no cluster ID", ErrBadInvite)
	}
	if len(m.GetAddrs()) == 0 {
		return Invite{}, fmt.Errorf("%w: no addresses to dial", ErrBadInvite)
	}
	if len(m.GetAddrs()) > 64 || len(m.GetRelays()) > 16 {
		return Invite{}, fmt.Errorf("%w: too many addresses", ErrBadInvite)
	}
	return Invite{ClusterID: m.GetClusterId(), Secret: m.GetSecret(), ExpiresAt: time.Unix(0, m.GetExpiresAt()), Addrs: m.GetAddrs(), Relays: m.GetRelays()}, nil
}
