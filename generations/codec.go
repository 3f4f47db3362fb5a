package generations

import (
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pkey/p2pkey/generations/pb"
)

// Encoding versions and bounds (rules S4, S6).
const (
	// CommandVersion is the only Command.version this ledger applies:
	// version 2 commands are signed by their author (rule S7).
	CommandVersion = 2
	// SnapshotVersion is the only Snapshot.version this ledger restores.
	SnapshotVersion = 2

	// MaxCommandSize bounds an encoded command.
	MaxCommandSize = 1 << 20
	// MaxSnapshotSize bounds an encoded snapshot.
	MaxSnapshotSize = 256 << 20
	// MaxReceiptsPerBatch bounds one RecordReceipts command.
	MaxReceiptsPerBatch = 4096
	// MaxAddrs and MaxAddrLen bound SetAddrs.
	MaxAddrs   = 16
	MaxAddrLen = 256
	// MaxKeyCheckSize bounds a key-check value (rule K4).
	MaxKeyCheckSize = 64
	// MaxSignatureSize bounds a receipt signature (Ed25519 uses 64).
	MaxSignatureSize = 512
	// MaxPeerIDSize bounds a binary peer ID.
	MaxPeerIDSize = 128
	// DigestSize is the size of an envelope digest and of an invite hash
	// (SHA-256).
	DigestSize = 32
	// ClusterIDLen is the length of a cluster ID: 16 bytes as lowercase hex.
	ClusterIDLen = 32

	// DefaultMaxGenerationsBehind is the retention bound a cluster gets
	// when Bootstrap does not set one (see Retention).
	DefaultMaxGenerationsBehind = 3
	// LapseGrace is the default of how long an active member may stay
	// behind the retention bound before its newest escrow retires and it
	// lapses (a cluster sets its own at Bootstrap, see Retention):
	// counted from the commit of the first generation it missed, in the
	// leader's time. A restart during a burst of generations costs no key.
	LapseGrace = time.Hour
	// MaxLapseGrace is the longest lapse grace a cluster may choose.
	MaxLapseGrace = 30 * 24 * time.Hour
	// MaxGenerationsBehindLimit is the largest retention bound accepted.
	// A bound this large is, in practice, no bound at all; anything larger
	// is a mistake and is refused (ErrBadRetention).
	MaxGenerationsBehindLimit = 1024

	// MaxClockSkew bounds how far a command's issued_at may be from the
	// leader's stamp. It also bounds the window in which a refused command
	// could be replayed (its sequence number is consumed only on success).
	MaxClockSkew = 5 * time.Minute
	// MinGenerationTimeout and MaxGenerationTimeout bound every timeout a
	// command carries: a generation opened by it must commit within it.
	MinGenerationTimeout = time.Second
	MaxGenerationTimeout = time.Hour
	// MaxInviteTTL bounds an invite's lifetime (from the leader's stamp,
	// with MaxClockSkew of slack for the issuer's clock).
	MaxInviteTTL = 7 * 24 * time.Hour
	// JoinProgressTimeout: a generation whose joiner has recorded no receipt
	// this long after it opened may be aborted by any active member before
	// its deadline (the joiner disappeared; joins must not wedge).
	JoinProgressTimeout = 10 * time.Second
)

// EncodeCommand validates cmd and returns its deterministic encoding.
func EncodeCommand(cmd *pb.Command) ([]byte, error) {
	if err := ValidateCommand(cmd); err != nil {
		return nil, err
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedCommand, err)
	}
	if len(b) > MaxCommandSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrCommandTooLarge, len(b))
	}
	return b, nil
}

// DecodeCommand decodes and validates one encoded command. It never panics;
// garbage gets a deterministic error.
func DecodeCommand(data []byte) (*pb.Command, error) {
	if len(data) > MaxCommandSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrCommandTooLarge, len(data))
	}
	cmd := new(pb.Command)
	if err := proto.Unmarshal(data, cmd); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedCommand, err)
	}
	if err := ValidateCommand(cmd); err != nil {
		return nil, err
	}
	return cmd, nil
}

// ValidateCommand checks every field of cmd that can be checked without the
// ledger's state: the version, the timestamp, peer IDs, sizes.
func ValidateCommand(cmd *pb.Command) error {
	if cmd == nil {
		return ErrEmptyCommand
	}
	if cmd.GetVersion() != CommandVersion {
		return fmt.Errorf("%w: command version %d", ErrUnsupportedVersion, cmd.GetVersion())
	}
	if cmd.GetIssuedAt() <= 0 {
		return fmt.Errorf("%w: issued_at=%d", ErrBadTime, cmd.GetIssuedAt())
	}
	if err := validPeer("author", cmd.GetAuthor()); err != nil {
		return err
	}
	if cmd.GetSeq() == 0 {
		return fmt.Errorf("%w: sequence 0", ErrReplay)
	}
	if n := len(cmd.GetSignature()); n == 0 || n > MaxSignatureSize {
		return fmt.Errorf("%w: signature of %d bytes", ErrBadCommandSignature, n)
	}
	return validateBody(cmd)
}

// validTimeout checks a timeout against MinGenerationTimeout and
// MaxGenerationTimeout.
func validTimeout(ns int64) error {
	if ns < int64(MinGenerationTimeout) || ns > int64(MaxGenerationTimeout) {
		return fmt.Errorf("%w: %s, want %s to %s", ErrBadTimeout, time.Duration(ns), MinGenerationTimeout, MaxGenerationTimeout)
	}
	return nil
}

// validateBody checks the fields of cmd's body.
func validateBody(cmd *pb.Command) error {
	switch b := cmd.GetBody().(type) {
	case *pb.Command_Bootstrap:
		if b.Bootstrap == nil {
			return ErrEmptyCommand
		}
		if err := validClusterID(b.Bootstrap.GetClusterId()); err != nil {
			return err
		}
		if n := b.Bootstrap.GetMaxGenerationsBehind(); n > MaxGenerationsBehindLimit {
			return fmt.Errorf("%w: max_generations_behind=%d, at most %d", ErrBadRetention, n, MaxGenerationsBehindLimit)
		}
		if ms := b.Bootstrap.GetLapseGraceMs(); ms > uint64(MaxLapseGrace.Milliseconds()) {
			return fmt.Errorf("%w: lapse_grace_ms=%d, at most %d", ErrBadRetention, ms, MaxLapseGrace.Milliseconds())
		}
		return validPeer("founder", b.Bootstrap.GetFounder())
	case *pb.Command_AddInvite:
		c := b.AddInvite
		if c == nil {
			return ErrEmptyCommand
		}
		if len(c.GetHash()) != DigestSize {
			return fmt.Errorf("%w: got %d bytes", ErrBadInviteHash, len(c.GetHash()))
		}
		if c.GetExpiresAt() <= 0 {
			return fmt.Errorf("%w: expires_at=%d", ErrBadTime, c.GetExpiresAt())
		}
		if len(c.GetKey()) != InviteKeySize {
			return fmt.Errorf("%w: got %d bytes", ErrBadInviteKey, len(c.GetKey()))
		}
		return validPeer("issuer", c.GetIssuer())
	case *pb.Command_ConsumeInvite:
		c := b.ConsumeInvite
		if c == nil {
			return ErrEmptyCommand
		}
		if len(c.GetHash()) != DigestSize {
			return fmt.Errorf("%w: got %d bytes", ErrBadInviteHash, len(c.GetHash()))
		}
		if err := validClusterID(c.GetClusterId()); err != nil {
			return err
		}
		if err := validAddrs(c.GetAddrs()); err != nil {
			return err
		}
		if t := c.GetTimeout(); t != 0 {
			if err := validTimeout(t); err != nil {
				return err
			}
		}
		if len(c.GetProof()) != 64 {
			return fmt.Errorf("%w: proof of %d bytes", ErrBadInviteProof, len(c.GetProof()))
		}
		return validPeer("joiner", c.GetJoiner())
	case *pb.Command_OpenGeneration:
		if b.OpenGeneration == nil {
			return ErrEmptyCommand
		}
		return validTimeout(b.OpenGeneration.GetTimeout())
	case *pb.Command_RecordReceipts:
		c := b.RecordReceipts
		if c == nil || len(c.GetReceipts()) == 0 {
			return ErrEmptyCommand
		}
		if len(c.GetReceipts()) > MaxReceiptsPerBatch {
			return fmt.Errorf("%w: %d > %d", ErrTooManyReceipts, len(c.GetReceipts()), MaxReceiptsPerBatch)
		}
		for i, r := range c.GetReceipts() {
			if err := validReceipt(r); err != nil {
				return fmt.Errorf("receipt %d: %w", i, err)
			}
		}
		return nil
	case *pb.Command_AbortGeneration:
		if b.AbortGeneration == nil {
			return ErrEmptyCommand
		}
		if b.AbortGeneration.GetGeneration() == 0 {
			return ErrBadGeneration
		}
		return nil
	case *pb.Command_RetireGeneration:
		if b.RetireGeneration == nil {
			return ErrEmptyCommand
		}
		if b.RetireGeneration.GetGeneration() == 0 {
			return ErrBadGeneration
		}
		return nil
	case *pb.Command_RemoveMember:
		c := b.RemoveMember
		if c == nil {
			return ErrEmptyCommand
		}
		if err := validTimeout(c.GetTimeout()); err != nil {
			return err
		}
		return validPeer("peer", c.GetPeer())
	case *pb.Command_SetAddrs:
		c := b.SetAddrs
		if c == nil {
			return ErrEmptyCommand
		}
		if err := validAddrs(c.GetAddrs()); err != nil {
			return err
		}
		return validPeer("peer", c.GetPeer())
	case *pb.Command_RecordKeyCheck:
		c := b.RecordKeyCheck
		if c == nil {
			return ErrEmptyCommand
		}
		if n := len(c.GetValue()); n == 0 || n > MaxKeyCheckSize {
			return fmt.Errorf("%w: %d bytes", ErrBadKeyCheck, n)
		}
		return validPeer("owner", c.GetOwner())
	case *pb.Command_SetRetention:
		c := b.SetRetention
		if c == nil {
			return ErrEmptyCommand
		}
		if err := validRetention(c.GetMaxGenerationsBehind()); err != nil {
			return err
		}
		return validPeer("by", c.GetBy())
	case *pb.Command_Vote:
		c := b.Vote
		if c == nil {
			return ErrEmptyCommand
		}
		if err := validTimeout(c.GetTimeout()); err != nil {
			return err
		}
		return validPeer("target", c.GetTarget())
	default:
		return ErrEmptyCommand
	}
}

func validReceipt(r *pb.Receipt) error {
	if r == nil {
		return ErrEmptyCommand
	}
	if r.GetGeneration() == 0 {
		return ErrBadGeneration
	}
	if len(r.GetDigest()) != DigestSize {
		return fmt.Errorf("%w: got %d bytes", ErrBadDigest, len(r.GetDigest()))
	}
	if n := len(r.GetSignature()); n == 0 || n > MaxSignatureSize {
		return fmt.Errorf("%w: signature of %d bytes", ErrBadSignature, n)
	}
	if err := validSplit(r.GetSplit()); err != nil {
		return err
	}
	if err := validPeer("owner", r.GetOwner()); err != nil {
		return err
	}
	return validPeer("holder", r.GetHolder())
}

// validPeer checks that b is a binary peer ID with an embedded public key
// (Ed25519 IDs are), so receipts by it can be verified from the ID alone.
func validPeer(what string, b []byte) error {
	if len(b) == 0 || len(b) > MaxPeerIDSize {
		return fmt.Errorf("%w: %s of %d bytes", ErrBadPeerID, what, len(b))
	}
	id, err := peer.IDFromBytes(b)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrBadPeerID, what, err)
	}
	if _, err := id.ExtractPublicKey(); err != nil {
		return fmt.Errorf("%w: %s has no embedded public key: %v", ErrBadPeerID, what, err)
	}
	return nil
}

// validSplit checks a split ID: SplitSize bytes, not all zero.
func validSplit(b []byte) error {
	if len(b) != SplitSize || SplitID(b) == (SplitID{}) {
		return fmt.Errorf("%w: %d bytes", ErrBadSplit, len(b))
	}
	return nil
}

// validRetention checks an explicit retention bound: 1 to
// MaxGenerationsBehindLimit.
func validRetention(n uint32) error {
	if n == 0 || n > MaxGenerationsBehindLimit {
		return fmt.Errorf("%w: max_generations_behind=%d, want 1 to %d", ErrBadRetention, n, MaxGenerationsBehindLimit)
	}
	return nil
}

func validClusterID(s string) error {
	if !IsValidClusterID(s) {
		return fmt.Errorf("%w: %q", ErrBadClusterID, s)
	}
	return nil
}

// IsValidClusterID reports whether s is 32 lowercase hex characters.
func IsValidClusterID(s string) bool {
	if len(s) != ClusterIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func validAddrs(addrs []string) error {
	if len(addrs) > MaxAddrs {
		return fmt.Errorf("%w: %d addresses, at most %d", ErrBadAddrs, len(addrs), MaxAddrs)
	}
	for i, a := range addrs {
		if len(a) == 0 || len(a) > MaxAddrLen || !utf8.ValidString(a) {
			return fmt.Errorf("%w: address %d", ErrBadAddrs, i)
		}
		for j := 0; j < len(a); j++ {
			if a[j] < 0x21 || a[j] > 0x7e {
				return fmt.Errorf("%w: address %d has a non-printable byte", ErrBadAddrs, i)
			}
		}
	}
	return nil
}

// unixNanos converts a time to the ledger's unix nanoseconds; the zero time
// is 0.
func unixNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// fromNanos is the inverse of unixNanos, in UTC.
func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// newCommand starts an unsigned command issued at now (the author's clock).
// Sign makes it valid.
func newCommand(now time.Time) *pb.Command {
	return &pb.Command{Version: CommandVersion, IssuedAt: unixNanos(now)}
}

// timeoutBetween is deadline - now in nanoseconds, 0 for a zero deadline.
// Constructors take deadlines for the caller's convenience; the command
// carries the timeout, and the ledger's deadline is the leader's stamp plus
// it.
func timeoutBetween(deadline, now time.Time) int64 {
	if deadline.IsZero() {
		return 0
	}
	return int64(deadline.Sub(now))
}

// NewBootstrap creates the cluster clusterID with founder as its only,
// active member, and the default retention bound
// (DefaultMaxGenerationsBehind).
func NewBootstrap(clusterID string, founder peer.ID, now time.Time) *pb.Command {
	return NewBootstrapWithRetention(clusterID, founder, 0, now)
}

// NewBootstrapWithRetention is NewBootstrap with an explicit retention bound
// (see Retention); 0 means DefaultMaxGenerationsBehind.
func NewBootstrapWithRetention(clusterID string, founder peer.ID, maxBehind uint32, now time.Time) *pb.Command {
	return NewBootstrapWithPolicy(clusterID, founder, Retention{MaxGenerationsBehind: maxBehind}, now)
}

// NewBootstrapWithPolicy is NewBootstrap with an explicit retention policy;
// a zero field means its default (DefaultMaxGenerationsBehind, LapseGrace).
// The grace is kept to the millisecond.
func NewBootstrapWithPolicy(clusterID string, founder peer.ID, r Retention, now time.Time) *pb.Command {
	c := newCommand(now)
	c.Body = &pb.Command_Bootstrap{Bootstrap: &pb.Bootstrap{
		ClusterId: clusterID, Founder: []byte(founder), MaxGenerationsBehind: r.MaxGenerationsBehind,
		LapseGraceMs: uint64(max(r.LapseGrace, 0).Milliseconds()),
	}}
	return c
}

// NewSetRetention changes the cluster's retention bound (see Retention). by
// must be an active member.
func NewSetRetention(maxBehind uint32, by peer.ID, now time.Time) *pb.Command {
	c := newCommand(now)
	c.Body = &pb.Command_SetRetention{SetRetention: &pb.SetRetention{MaxGenerationsBehind: maxBehind, By: []byte(by)}}
	return c
}

// NewAddInvite records an invite by the SHA-256 hash of its secret and the
// public key the secret seeds (InviteKey).
func NewAddInvite(hash, key []byte, expiresAt time.Time, issuer peer.ID, now time.Time) *pb.Command {
	c := newCommand(now)
	c.Body = &pb.Command_AddInvite{AddInvite: &pb.AddInvite{
		Hash: append([]byte(nil), hash...), Key: append([]byte(nil), key...), ExpiresAt: unixNanos(expiresAt), Issuer: []byte(issuer),
	}}
	return c
}

// NewConsumeInvite admits joiner with the invite whose hash is given. A zero
// deadline admits it at once (only before the first generation); otherwise
// it joins through a generation that must commit within deadline-now of the
// leader's stamp. ProveInvite must add the invite proof, and the joiner
// signs it.
func NewConsumeInvite(hash []byte, joiner peer.ID, clusterID string, deadline, now time.Time) *pb.Command {
	return NewConsumeInviteWithAddrs(hash, joiner, clusterID, nil, deadline, now)
}

// NewConsumeInviteWithAddrs is NewConsumeInvite that also records the
// joiner's addresses.
func NewConsumeInviteWithAddrs(hash []byte, joiner peer.ID, clusterID string, addrs []string, deadline, now time.Time) *pb.Command {
	c := newCommand(now)
	c.Body = &pb.Command_ConsumeInvite{ConsumeInvite: &pb.ConsumeInvite{
		Hash: append([]byte(nil), hash...), Joiner: []byte(joiner), ClusterId: clusterID,
		Timeout: timeoutBetween(deadline, now), Addrs: append([]string(nil), addrs...),
	}}
	return c
}

// NewOpenGeneration opens the next generation for the current members and
// every pending joiner, to commit within deadline-now.
func NewOpenGeneration(deadline, now time.Time) *pb.Command {
	c := newCommand(now)
	c.Body = &pb.Command_OpenGeneration{OpenGeneration: &pb.OpenGeneration{Timeout: timeoutBetween(deadline, now)}}
	return c
}

// Receipt is a holder's signed acknowledgement that it stores one envelope.
type Receipt struct {
	Generation uint64
	Owner      peer.ID
	Holder     peer.ID
	Split      SplitID // the owner's split the envelope belongs to
	Digest     []byte  // SHA-256 of the encoded envelope
	Signature  []byte  // holder's signature over ReceiptMessage
}

func (r Receipt) toPB() *pb.Receipt {
	return &pb.Receipt{
		Generation: r.Generation,
		Owner:      []byte(r.Owner),
		Holder:     []byte(r.Holder),
		Split:      append([]byte(nil), r.Split[:]...),
		Digest:     append([]byte(nil), r.Digest...),
		Signature:  append([]byte(nil), r.Signature...),
	}
}

// NewRecordReceipts records a batch of receipts (all or nothing). Every
// receipt's owner must be the command's author.
func NewRecordReceipts(receipts []Receipt, now time.Time) *pb.Command {
	c := newCommand(now)
	rr := &pb.RecordReceipts{Receipts: make([]*pb.Receipt, 0, len(receipts))}
	for _, r := range receipts {
		rr.Receipts = append(rr.Receipts, r.toPB())
	}
	c.Body = &pb.Command_RecordReceipts{RecordReceipts: rr}
	return c
}

// NewAbortGeneration aborts the open generation gen: after its deadline, at
// any time by one of its joiners (it gives up), or by an active member once
// a joiner has recorded nothing for JoinProgressTimeout.
func NewAbortGeneration(gen uint64, now time.Time) *pb.Command {
	c := newCommand(now)
	c.Body = &pb.Command_AbortGeneration{AbortGeneration: &pb.AbortGeneration{Generation: gen}}
	return c
}

// NewRetireGeneration asks for gen to be retired (see RetireGeneration in
// the package documentation: the ledger also retires automatically).
func NewRetireGeneration(gen uint64, now time.Time) *pb.Command {
	c := newCommand(now)
	c.Body = &pb.Command_RetireGeneration{RetireGeneration: &pb.RetireGeneration{Generation: gen}}
	return c
}

// NewRemoveMember is p leaving the cluster (R1): only p may author it. A
// generation without p opens, to commit within deadline-now.
func NewRemoveMember(p peer.ID, deadline, now time.Time) *pb.Command {
	c := newCommand(now)
	c.Body = &pb.Command_RemoveMember{RemoveMember: &pb.RemoveMember{Peer: []byte(p), Timeout: timeoutBetween(deadline, now)}}
	return c
}

// NewVote is the author's vote to remove target (reinstate false) or to
// lift its suspension (rule R2). If the vote makes the removal final, the
// generation that opens must commit within deadline-now.
func NewVote(target peer.ID, reinstate bool, deadline, now time.Time) *pb.Command {
	c := newCommand(now)
	c.Body = &pb.Command_Vote{Vote: &pb.Vote{Target: []byte(target), Reinstate: reinstate, Timeout: timeoutBetween(deadline, now)}}
	return c
}

// NewSetAddrs records the multiaddr strings p can be dialled at. Only p may
// author it.
func NewSetAddrs(p peer.ID, addrs []string, now time.Time) *pb.Command {
	c := newCommand(now)
	c.Body = &pb.Command_SetAddrs{SetAddrs: &pb.SetAddrs{Peer: []byte(p), Addrs: append([]string(nil), addrs...)}}
	return c
}

// NewRecordKeyCheck records owner's key-check value (rule K4). Only owner
// may author it.
func NewRecordKeyCheck(owner peer.ID, value []byte, now time.Time) *pb.Command {
	c := newCommand(now)
	c.Body = &pb.Command_RecordKeyCheck{RecordKeyCheck: &pb.RecordKeyCheck{Owner: []byte(owner), Value: append([]byte(nil), value...)}}
	return c
}
