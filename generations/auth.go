package generations

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
	"slices"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pkey/p2pkey/generations/pb"
)

// Domain strings separate the ledger's signatures from every other signature
// a libp2p key or an invite key makes. The trailing version is signed too.
const (
	commandDomain = "p2pkey/ledger-command/v2\x00"
	inviteDomain  = "p2pkey/invite-proof/v1\x00"
	inviteKeyInfo = "p2pkey/invite-key/v1"
)

// InviteKeySize is the size of an invite's public key (Ed25519).
const InviteKeySize = ed25519.PublicKeySize

// SigHash returns the bytes an author signs for cmd (rule S7): a domain
// string, the cluster ID, and the deterministic encoding of cmd with its
// signature left empty. The author, its sequence number, issued_at and
// the body are all covered; the leader's stamp is not (it is outside the
// command).
func SigHash(clusterID string, cmd *pb.Command) ([]byte, error) {
	c := proto.Clone(cmd).(*pb.Command)
	c.Signature = nil
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedCommand, err)
	}
	b := make([]byte, 0, len(commandDomain)+2+len(clusterID)+len(body))
	b = append(b, commandDomain...)
	b = appendField(b, []byte(clusterID))
	return append(b, body...), nil
}

// Sign makes key's peer the author of cmd with sequence number seq, and
// signs it for cluster clusterID. Sequence numbers must be strictly
// increasing per author; the node uses max(last+1, unix nanoseconds), so
// they stay increasing across restarts without being stored.
func Sign(cmd *pb.Command, key crypto.PrivKey, clusterID string, seq uint64) error {
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return fmt.Errorf("%w: author: %v", ErrBadPeerID, err)
	}
	cmd.Author, cmd.Seq, cmd.Signature = []byte(id), seq, nil
	msg, err := SigHash(clusterID, cmd)
	if err != nil {
		return err
	}
	sig, err := key.Sign(msg)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadCommandSignature, err)
	}
	cmd.Signature = sig
	return nil
}

// verifyCommand checks cmd's signature by its author.
func verifyCommand(clusterID string, cmd *pb.Command) error {
	author := peer.ID(cmd.GetAuthor())
	pk, err := author.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("%w: author key: %v", ErrBadCommandSignature, err)
	}
	msg, err := SigHash(clusterID, cmd)
	if err != nil {
		return err
	}
	if ok, err := pk.Verify(msg, cmd.GetSignature()); err != nil || !ok {
		return fmt.Errorf("%w: by %s", ErrBadCommandSignature, author)
	}
	return nil
}

// InviteKey returns the Ed25519 key pair an invite secret seeds. The ledger
// stores the public half with the invite; a joiner proves it knows the
// secret by signing InviteProof with the private half, and every node that
// applies the join checks it, without the secret entering the log.
func InviteKey(secret []byte) (ed25519.PublicKey, ed25519.PrivateKey, error) {
	seed, err := hkdf.Key(sha256.New, secret, nil, inviteKeyInfo, ed25519.SeedSize)
	if err != nil {
		return nil, nil, err
	}
	priv := ed25519.NewKeyFromSeed(seed)
	return priv.Public().(ed25519.PublicKey), priv, nil
}

// InviteProof returns the bytes an invite key signs to admit joiner to
// cluster clusterID with the invite whose hash is hash.
func InviteProof(clusterID string, hash []byte, joiner peer.ID) []byte {
	b := make([]byte, 0, len(inviteDomain)+6+len(clusterID)+len(hash)+len(joiner))
	b = append(b, inviteDomain...)
	b = appendField(b, []byte(clusterID))
	b = appendField(b, hash)
	return appendField(b, []byte(joiner))
}

// ProveInvite signs cmd's ConsumeInvite with the invite's private key.
func ProveInvite(cmd *pb.Command, clusterID string, invitePriv ed25519.PrivateKey) error {
	ci := cmd.GetConsumeInvite()
	if ci == nil {
		return fmt.Errorf("%w: not a ConsumeInvite", ErrEmptyCommand)
	}
	ci.Proof = ed25519.Sign(invitePriv, InviteProof(clusterID, ci.GetHash(), peer.ID(ci.GetJoiner())))
	return nil
}

// Kind names a command's body.
type Kind string

// Command kinds.
const (
	KindBootstrap     Kind = "bootstrap"
	KindAddInvite     Kind = "add_invite"
	KindConsumeInvite Kind = "consume_invite"
	KindOpen          Kind = "open_generation"
	KindReceipts      Kind = "record_receipts"
	KindAbort         Kind = "abort_generation"
	KindRetire        Kind = "retire_generation"
	KindLeave         Kind = "remove_member"
	KindSetAddrs      Kind = "set_addrs"
	KindKeyCheck      Kind = "record_key_check"
	KindSetRetention  Kind = "set_retention"
	KindVote          Kind = "vote"
)

// Authority is one row of the authority table: who may author a command.
type Authority struct {
	Kind Kind
	// Subject names the field that must equal the author ("" when the
	// command acts for the cluster rather than for one member).
	Subject string
	// Statuses lists the author's member statuses that may issue it; nil
	// means the author need not be a member (the command's own rules
	// decide: a bootstrap founder, a joiner consuming its invite).
	Statuses []MemberStatus
	// NotSuspended refuses an author with any remove vote against it.
	NotSuspended bool
}

// AuthorityTable is the whole authority model (rule S7), checked on apply by
// every node after the signature and the sequence number. A row's
// refusals: ErrNotAuthor (the subject is not the author), ErrNotMember /
// ErrMemberRemoved / ErrMemberLapsed / ErrUnauthorized (the author's status),
// ErrMemberSuspended. Each command then checks its own rules (for example
// AbortGeneration before the deadline only for a joiner of the generation
// or a stalled join).
var AuthorityTable = []Authority{
	{Kind: KindBootstrap, Subject: "founder"},
	{Kind: KindAddInvite, Subject: "issuer", Statuses: []MemberStatus{StatusActive}, NotSuspended: true},
	{Kind: KindConsumeInvite, Subject: "joiner"},
	{Kind: KindOpen, Statuses: []MemberStatus{StatusActive}},
	{Kind: KindReceipts, Subject: "owner (of every receipt)", Statuses: []MemberStatus{StatusActive, StatusJoining}},
	{Kind: KindAbort, Statuses: []MemberStatus{StatusActive, StatusJoining}},
	{Kind: KindRetire, Statuses: []MemberStatus{StatusActive}},
	{Kind: KindLeave, Subject: "peer", Statuses: []MemberStatus{StatusActive, StatusJoining, StatusLapsed}},
	{Kind: KindSetAddrs, Subject: "peer", Statuses: []MemberStatus{StatusActive, StatusJoining}},
	{Kind: KindKeyCheck, Subject: "owner", Statuses: []MemberStatus{StatusActive, StatusJoining}},
	{Kind: KindSetRetention, Subject: "by", Statuses: []MemberStatus{StatusActive}, NotSuspended: true},
	{Kind: KindVote, Statuses: []MemberStatus{StatusActive}},
}

// KindOf returns the kind of cmd's body.
func KindOf(cmd *pb.Command) Kind {
	switch cmd.GetBody().(type) {
	case *pb.Command_Bootstrap:
		return KindBootstrap
	case *pb.Command_AddInvite:
		return KindAddInvite
	case *pb.Command_ConsumeInvite:
		return KindConsumeInvite
	case *pb.Command_OpenGeneration:
		return KindOpen
	case *pb.Command_RecordReceipts:
		return KindReceipts
	case *pb.Command_AbortGeneration:
		return KindAbort
	case *pb.Command_RetireGeneration:
		return KindRetire
	case *pb.Command_RemoveMember:
		return KindLeave
	case *pb.Command_SetAddrs:
		return KindSetAddrs
	case *pb.Command_RecordKeyCheck:
		return KindKeyCheck
	case *pb.Command_SetRetention:
		return KindSetRetention
	case *pb.Command_Vote:
		return KindVote
	}
	return ""
}

// subjects returns the peers a command acts for, each of which must be its
// author.
func subjects(cmd *pb.Command) [][]byte {
	switch b := cmd.GetBody().(type) {
	case *pb.Command_Bootstrap:
		return [][]byte{b.Bootstrap.GetFounder()}
	case *pb.Command_AddInvite:
		return [][]byte{b.AddInvite.GetIssuer()}
	case *pb.Command_ConsumeInvite:
		return [][]byte{b.ConsumeInvite.GetJoiner()}
	case *pb.Command_RecordReceipts:
		var out [][]byte
		for _, r := range b.RecordReceipts.GetReceipts() {
			out = append(out, r.GetOwner())
		}
		return out
	case *pb.Command_RemoveMember:
		return [][]byte{b.RemoveMember.GetPeer()}
	case *pb.Command_SetAddrs:
		return [][]byte{b.SetAddrs.GetPeer()}
	case *pb.Command_RecordKeyCheck:
		return [][]byte{b.RecordKeyCheck.GetOwner()}
	case *pb.Command_SetRetention:
		return [][]byte{b.SetRetention.GetBy()}
	}
	return nil
}

func authorityOf(k Kind) (Authority, bool) {
	for _, a := range AuthorityTable {
		if a.Kind == k {
			return a, true
		}
	}
	return Authority{}, false
}

// authorize checks cmd's author against the authority table.
func (l *Ledger) authorize(cmd *pb.Command) error {
	author := peer.ID(cmd.GetAuthor())
	a, ok := authorityOf(KindOf(cmd))
	if !ok {
		return ErrEmptyCommand
	}
	for _, s := range subjects(cmd) {
		if !bytes.Equal(s, cmd.GetAuthor()) {
			return fmt.Errorf("%w: %s acts for %s (%s)", ErrNotAuthor, author, peer.ID(s), a.Subject)
		}
	}
	if a.Statuses == nil {
		return nil
	}
	m := l.members[author]
	if m == nil || !slices.Contains(a.Statuses, m.status) {
		if err := l.memberErr(author); err != nil {
			return fmt.Errorf("%s: %w", a.Kind, err)
		}
		if slices.Contains(a.Statuses, StatusActive) && m.status == StatusJoining {
			return fmt.Errorf("%w: %s is %s, %s needs an active member", ErrNotActive, author, m.status, a.Kind)
		}
		return fmt.Errorf("%w: %s is %s, %s needs %v", ErrUnauthorized, author, m.status, a.Kind, a.Statuses)
	}
	if a.NotSuspended && len(m.removeVotes) > 0 {
		return fmt.Errorf("%w: %s", ErrMemberSuspended, author)
	}
	return nil
}
