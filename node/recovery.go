package node

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"filippo.io/age/armor"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/generations"
)

// A break-glass recovery kit is K itself, with the cluster ID, the peer ID
// and the generation it was escrowed in, encrypted with age to recipients
// the operator names (an X25519 or hybrid age recipient, or an SSH public
// key). The node encrypts it in memory and hands out only the ciphertext:
// K never crosses the control socket in plaintext and never reaches the
// node's disk (rule K1). With the kit and one of its identities, an operator
// derives every key the node would, with no daemon and no network, on the
// day the cluster is gone. That is the trade: whoever holds a kit and its
// identity holds this node's key, whatever the cluster says (removal
// included). Making one is opt-in.
//
// The plaintext is a small versioned text format (rule S6):
//
//	p2pkey-recovery-kit v1
//	cluster: <cluster ID>
//	peer: <peer ID>
//	generation: <escrow generation>
//	created: <RFC 3339 time>
//	key-check: <hex of the key-check value, rule K4>
//	key: <hex of K>
const (
	recoveryKitMagic = "p2pkey-recovery-kit v1"
	// maxRecoveryKit bounds the kit a reader accepts, armoured, and its
	// plaintext.
	maxRecoveryKit = 64 << 10
	// MaxRecoveryRecipients bounds the recipients of one kit.
	MaxRecoveryRecipients = 16
)

// Errors about recovery kits.
var (
	// ErrRecoveryKit: a kit that does not decrypt, or whose contents are not
	// a well-formed kit whose K passes its key check.
	ErrRecoveryKit = errors.New("not a valid p2pkey recovery kit")
)

// RecoveryKit is an opened recovery kit. It holds K: wipe it when done.
type RecoveryKit struct {
	ClusterID  string
	PeerID     peer.ID
	Generation uint64
	CreatedAt  time.Time
	key        []byte
}

// RecoveryKitInfo describes a kit without its key: what MakeRecoveryKit made
// and what status reports.
type RecoveryKitInfo struct {
	ClusterID  string    `json:"cluster_id"`
	PeerID     string    `json:"peer_id"`
	Generation uint64    `json:"generation"`
	CreatedAt  time.Time `json:"created_at"`
	Recipients []string  `json:"recipients"`
}

// RecoveryKitStatus is what the node knows of the last kit it made. A record
// of it (no key material: the key-check value is in the ledger already) is
// kept in the data directory so that status can say, across restarts,
// whether a kit exists for the current K.
type RecoveryKitStatus struct {
	RecoveryKitInfo
	// CurrentKey: the kit holds the node's current K (its key check matches
	// the one the ledger has for this node). False after the node started
	// over with a new K, for example after being invited again.
	CurrentKey bool `json:"current_key"`
}

// recoveryRecord is DATA/recovery-kit.json.
type recoveryRecord struct {
	Version  int             `json:"version"`
	Kit      RecoveryKitInfo `json:"kit"`
	KeyCheck []byte          `json:"key_check"`
}

func (c Config) recoveryPath() string { return filepath.Join(c.DataDir, "recovery-kit.json") }

// ParseRecoveryRecipient parses an age recipient (age1...), or an SSH public
// key (ssh-ed25519 or ssh-rsa, as in authorized_keys), that a recovery kit
// is encrypted to. Passphrase (scrypt) recipients are refused: a kit must
// open with an identity kept apart from it.
func ParseRecoveryRecipient(s string) (age.Recipient, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "ssh-") {
		r, err := agessh.ParseRecipient(s)
		if err != nil {
			return nil, fmt.Errorf("recipient %q: %w", abbreviate(s), err)
		}
		return r, nil
	}
	rs, err := age.ParseRecipients(strings.NewReader(s))
	if err != nil || len(rs) != 1 {
		return nil, fmt.Errorf("recipient %q: want an age recipient (age1...) or an SSH public key", abbreviate(s))
	}
	return rs[0], nil
}

// ParseRecoveryIdentities parses an age identity file (AGE-SECRET-KEY-1...
// lines, as age-keygen writes) or an unencrypted SSH private key.
func ParseRecoveryIdentities(data []byte) ([]age.Identity, error) {
	if bytes.Contains(data, []byte("-----BEGIN")) && bytes.Contains(data, []byte("PRIVATE KEY-----")) {
		id, err := agessh.ParseIdentity(data)
		if err != nil {
			return nil, fmt.Errorf("SSH identity: %w", err)
		}
		return []age.Identity{id}, nil
	}
	ids, err := age.ParseIdentities(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("age identity file: %w", err)
	}
	return ids, nil
}

func abbreviate(s string) string {
	if len(s) > 24 {
		return s[:20] + "…"
	}
	return s
}

// MakeRecoveryKit encrypts K, with what is needed to use it, to recipients
// (see ParseRecoveryRecipient) and returns the armoured age file. The node
// must be unlocked (rule K2). Only the ciphertext leaves this function; the
// node records that a kit was made (when, to whom, and for which key-check
// value), never the kit.
func (n *Node) MakeRecoveryKit(recipients []string) ([]byte, RecoveryKitInfo, error) {
	var info RecoveryKitInfo
	if len(recipients) == 0 {
		return nil, info, errors.New("a recovery kit needs at least one recipient")
	}
	if len(recipients) > MaxRecoveryRecipients {
		return nil, info, fmt.Errorf("a recovery kit takes at most %d recipients", MaxRecoveryRecipients)
	}
	var rs []age.Recipient
	for _, s := range recipients {
		r, err := ParseRecoveryRecipient(s)
		if err != nil {
			return nil, info, err
		}
		rs = append(rs, r)
		info.Recipients = append(info.Recipients, strings.TrimSpace(s))
	}
	state, p := n.LockState()
	if state != LockUnlocked {
		if state == LockUnescrowed && n.activeMembers() < 2 {
			return nil, info, ErrUnescrowed
		}
		reason := strings.TrimPrefix(p.Reason, "locked: ")
		if reason == "" {
			reason = "not yet escrowed in a committed generation"
		}
		return nil, info, fmt.Errorf("%w: %s", ErrLocked, reason)
	}
	k := n.keys.get()
	if k == nil {
		return nil, info, ErrLocked
	}
	defer clear(k)
	self := n.host.ID()
	var (
		clusterID string
		check     []byte
		cov       generations.Coverage
	)
	n.view(func(l *generations.Ledger) {
		clusterID = l.ClusterID()
		check, _ = l.KeyCheck(self)
		cov = l.Coverage(self)
	})
	mine := keyCheck(k, clusterID, self)
	if len(check) == 0 || !hmac.Equal(check, mine) {
		// Unlocked but the ledger has not (yet) recorded this K's check:
		// a kit must be for the K the cluster escrows.
		return nil, info, fmt.Errorf("%w: the ledger has no matching key check for this node yet", ErrLocked)
	}
	info.ClusterID, info.PeerID, info.Generation = clusterID, self.String(), cov.Generation
	info.CreatedAt = n.now().UTC().Truncate(time.Second)

	plain := make([]byte, 0, 512)
	plain = fmt.Appendf(plain, "%s\ncluster: %s\npeer: %s\ngeneration: %d\ncreated: %s\nkey-check: %x\nkey: ",
		recoveryKitMagic, clusterID, self, cov.Generation, info.CreatedAt.Format(time.RFC3339), mine)
	plain = hex.AppendEncode(plain, k)
	plain = append(plain, '\n')
	defer clear(plain)

	var out bytes.Buffer
	aw := armor.NewWriter(&out)
	w, err := age.Encrypt(aw, rs...)
	if err != nil {
		return nil, info, fmt.Errorf("recovery kit: %w", err)
	}
	if _, err := w.Write(plain); err != nil {
		return nil, info, err
	}
	if err := w.Close(); err != nil {
		return nil, info, err
	}
	if err := aw.Close(); err != nil {
		return nil, info, err
	}
	data, _ := json.MarshalIndent(recoveryRecord{Version: 1, Kit: info, KeyCheck: mine}, "", "  ")
	if err := writeFileAtomic(n.cfg.recoveryPath(), append(data, '\n'), 0o600); err != nil {
		return nil, info, fmt.Errorf("record that a recovery kit was made: %w", err)
	}
	log.Warnw("made a break-glass recovery kit: whoever holds it and one of its identities holds this node's key",
		"generation", cov.Generation, "recipients", len(rs))
	return out.Bytes(), info, nil
}

// RecoveryKitStatus reports the last recovery kit this node made, or nil if
// it never made one.
func (n *Node) RecoveryKitStatus() *RecoveryKitStatus {
	data, err := os.ReadFile(n.cfg.recoveryPath())
	if err != nil {
		return nil
	}
	var rec recoveryRecord
	if json.Unmarshal(data, &rec) != nil || rec.Version != 1 {
		return nil
	}
	st := &RecoveryKitStatus{RecoveryKitInfo: rec.Kit}
	var check []byte
	self := n.host.ID()
	n.view(func(l *generations.Ledger) { check, _ = l.KeyCheck(self) })
	if len(check) == 0 {
		if h, ok := n.loadUnlockHint(); ok {
			check = h.KeyCheck
		}
	}
	st.CurrentKey = rec.Kit.PeerID == self.String() && len(check) > 0 && hmac.Equal(check, rec.KeyCheck)
	return st
}

// OpenRecoveryKit decrypts a recovery kit (armoured or binary age) with
// identities and checks it: K must pass the key check it carries (rule K4),
// which binds it to the cluster and the peer. It needs no daemon and no
// network.
func OpenRecoveryKit(r io.Reader, identities ...age.Identity) (*RecoveryKit, error) {
	br := bufio.NewReader(io.LimitReader(r, maxRecoveryKit))
	var src io.Reader = br
	if head, _ := br.Peek(len(armor.Header)); string(head) == armor.Header {
		src = armor.NewReader(br)
	}
	pr, err := age.Decrypt(src, identities...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRecoveryKit, err)
	}
	plain, err := io.ReadAll(io.LimitReader(pr, maxRecoveryKit))
	if err != nil {
		clear(plain)
		return nil, fmt.Errorf("%w: %w", ErrRecoveryKit, err)
	}
	defer clear(plain)
	return parseRecoveryKit(plain)
}

func parseRecoveryKit(plain []byte) (*RecoveryKit, error) {
	bad := func(format string, a ...any) (*RecoveryKit, error) {
		return nil, fmt.Errorf("%w: %s", ErrRecoveryKit, fmt.Sprintf(format, a...))
	}
	lines := bytes.Split(bytes.TrimRight(plain, "\n"), []byte("\n"))
	if len(lines) == 0 || string(lines[0]) != recoveryKitMagic {
		return bad("unknown format or version")
	}
	fields := map[string][]byte{}
	for _, l := range lines[1:] {
		name, value, ok := bytes.Cut(l, []byte(": "))
		if !ok {
			return bad("malformed line")
		}
		if _, dup := fields[string(name)]; dup {
			return bad("field %q twice", name)
		}
		fields[string(name)] = value
	}
	for _, f := range []string{"cluster", "peer", "generation", "created", "key-check", "key"} {
		if len(fields[f]) == 0 {
			return bad("no %s", f)
		}
	}
	kit := &RecoveryKit{ClusterID: string(fields["cluster"])}
	var err error
	if kit.PeerID, err = peer.Decode(string(fields["peer"])); err != nil {
		return bad("peer ID: %v", err)
	}
	if kit.Generation, err = strconv.ParseUint(string(fields["generation"]), 10, 64); err != nil {
		return bad("generation: %v", err)
	}
	if kit.CreatedAt, err = time.Parse(time.RFC3339, string(fields["created"])); err != nil {
		return bad("created: %v", err)
	}
	check, err := hex.DecodeString(string(fields["key-check"]))
	if err != nil {
		return bad("key check: %v", err)
	}
	kit.key = make([]byte, KeySize)
	if n, err := hex.Decode(kit.key, fields["key"]); err != nil || n != KeySize || len(fields["key"]) != 2*KeySize {
		kit.Wipe()
		return bad("the key is not %d bytes of hex", KeySize)
	}
	if !hmac.Equal(check, keyCheck(kit.key, kit.ClusterID, kit.PeerID)) {
		kit.Wipe()
		return bad("the key fails its key check (the kit is corrupt)")
	}
	return kit, nil
}

// DeriveKey returns the key for purpose, exactly as the node's Key does.
func (k *RecoveryKit) DeriveKey(purpose string) ([]byte, error) {
	if purpose == "" {
		return nil, errors.New("a key purpose is required")
	}
	if k.key == nil {
		return nil, errors.New("the recovery kit was wiped")
	}
	return deriveKey(k.key, k.ClusterID, purpose)
}

// Wipe zeroes K.
func (k *RecoveryKit) Wipe() {
	clear(k.key)
	k.key = nil
}
