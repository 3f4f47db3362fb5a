package generations

import "errors"

// Sentinel errors. Every rejection the ledger makes wraps exactly one of
// these, so callers test with errors.Is. Each has a stable short code (see
// ErrorCode) so that a rejection survives being forwarded to the Raft leader
// and back over the network.
var (
	// Encoding and field validation (DecodeCommand, EncodeCommand, Restore).
	ErrCommandTooLarge    = errors.New("generations: command too large")
	ErrMalformedCommand   = errors.New("generations: malformed command")
	ErrUnsupportedVersion = errors.New("generations: unsupported version")
	ErrEmptyCommand       = errors.New("generations: command has no body")
	ErrBadTime            = errors.New("generations: bad timestamp")
	ErrBadClusterID       = errors.New("generations: bad cluster ID")
	ErrBadPeerID          = errors.New("generations: bad peer ID")
	ErrBadInviteHash      = errors.New("generations: invite hash must be 32 bytes")
	ErrBadDigest          = errors.New("generations: digest must be 32 bytes")
	ErrBadSignature       = errors.New("generations: bad receipt signature")
	ErrBadGeneration      = errors.New("generations: bad generation number")
	ErrBadDeadline        = errors.New("generations: bad deadline")
	ErrBadAddrs           = errors.New("generations: bad addresses")
	ErrBadKeyCheck        = errors.New("generations: bad key-check value")
	ErrTooManyReceipts    = errors.New("generations: too many receipts in one batch")
	ErrBadSnapshot        = errors.New("generations: bad snapshot")
	ErrBadRetention       = errors.New("generations: bad retention bound")

	// Cluster and membership.
	ErrNotBootstrapped     = errors.New("generations: ledger not bootstrapped")
	ErrAlreadyBootstrapped = errors.New("generations: ledger already bootstrapped")
	ErrClusterMismatch     = errors.New("generations: wrong cluster ID")
	ErrNotMember           = errors.New("generations: not a member")
	ErrNotActive           = errors.New("generations: member is not active")
	ErrAlreadyMember       = errors.New("generations: already a member")
	ErrMemberRemoved       = errors.New("generations: member was removed")
	ErrLastMember          = errors.New("generations: cannot remove the last active member")
	ErrMemberLapsed        = errors.New("generations: member lapsed (retention bound); it must be invited again")
	ErrInvalidMemberStatus = errors.New("generations: invalid member status transition")

	// Invites (rule J1).
	ErrDuplicateInvite = errors.New("generations: invite already exists")
	ErrTooManyInvites  = errors.New("generations: too many live invites")
	ErrUnknownInvite   = errors.New("generations: unknown invite")
	ErrInviteUsed      = errors.New("generations: invite already used")
	ErrInviteExpired   = errors.New("generations: invite expired")
	ErrInviteRevoked   = errors.New("generations: invite issuer was removed")

	// Generation lifecycle (rules G2, G3, G4).
	ErrGenerationOpen         = errors.New("generations: a generation is already open")
	ErrUnknownGeneration      = errors.New("generations: unknown generation")
	ErrGenerationNotOpen      = errors.New("generations: generation is not open")
	ErrGenerationNotCommitted = errors.New("generations: generation is not committed")
	ErrGenerationCommitted    = errors.New("generations: generation is committed")
	ErrGenerationAborted      = errors.New("generations: generation was aborted")
	ErrGenerationRetired      = errors.New("generations: generation was retired")
	ErrInvalidState           = errors.New("generations: invalid generation state")
	ErrDeadlineNotReached     = errors.New("generations: deadline not reached")
	ErrRetireCurrent          = errors.New("generations: cannot retire the current generation")
	ErrRetentionRequired      = errors.New("generations: generation still needed by a member (G4)")

	// Receipts.
	ErrOwnerNotInGeneration  = errors.New("generations: owner not in generation")
	ErrHolderNotInGeneration = errors.New("generations: holder not in generation")
	ErrOwnerRemoved          = errors.New("generations: owner was removed")
	ErrHolderRemoved         = errors.New("generations: holder was removed")
	ErrOwnerLapsed           = errors.New("generations: owner lapsed (retention bound)")
	ErrHolderLapsed          = errors.New("generations: holder lapsed (retention bound)")
	ErrDuplicateReceipt      = errors.New("generations: conflicting receipt already recorded")
	ErrNoReceipt             = errors.New("generations: no receipt recorded")

	// Key check (rule K4).
	ErrNotEscrowed      = errors.New("generations: owner not escrowed")
	ErrKeyCheckMismatch = errors.New("generations: key-check value differs from the recorded one")

	// Authority (rule S7): who may issue which command.
	ErrBadCommandSignature = errors.New("generations: bad command signature")
	ErrReplay              = errors.New("generations: replayed or reordered command (sequence not above the author's last)")
	ErrClockSkew           = errors.New("generations: command issued too far from the leader's clock")
	ErrNotAuthor           = errors.New("generations: command acts for a peer other than its author")
	ErrUnauthorized        = errors.New("generations: author's status may not issue this command")
	ErrMemberSuspended     = errors.New("generations: member is suspended")
	ErrBadInviteProof      = errors.New("generations: invite proof does not verify")
	ErrBadInviteKey        = errors.New("generations: invite key must be 32 bytes")
	ErrInviteTTL           = errors.New("generations: invite lifetime out of bounds")
	ErrBadTimeout          = errors.New("generations: timeout out of bounds")
	ErrDirectAdmission     = errors.New("generations: direct admission is allowed only before the first generation")
	ErrTooFewMembers       = errors.New("generations: a generation needs at least 2 members (no escrow of threshold 1)")

	// Removal votes (rule R2).
	ErrSelfVote     = errors.New("generations: a member cannot vote on itself (leave instead)")
	ErrNotSuspended = errors.New("generations: member is not suspended")

	// Splits (escrowed means recoverable).
	ErrBadSplit       = errors.New("generations: split ID must be 16 non-zero bytes")
	ErrSplitMismatch  = errors.New("generations: owner is escrowed with another split in this generation")
	ErrOwnerSuspended = errors.New("generations: owner is suspended")

	// ErrInternal reports a bug: Apply recovered from a panic.
	ErrInternal = errors.New("generations: internal error")
)

// errorCodes is the stable mapping between sentinels and wire codes. Codes
// are never reused or renamed.
var errorCodes = []struct {
	err  error
	code string
}{
	{ErrCommandTooLarge, "command_too_large"},
	{ErrMalformedCommand, "malformed_command"},
	{ErrUnsupportedVersion, "unsupported_version"},
	{ErrEmptyCommand, "empty_command"},
	{ErrBadTime, "bad_time"},
	{ErrBadClusterID, "bad_cluster_id"},
	{ErrBadPeerID, "bad_peer_id"},
	{ErrBadInviteHash, "bad_invite_hash"},
	{ErrBadDigest, "bad_digest"},
	{ErrBadSignature, "bad_signature"},
	{ErrBadGeneration, "bad_generation"},
	{ErrBadDeadline, "bad_deadline"},
	{ErrBadAddrs, "bad_addrs"},
	{ErrBadKeyCheck, "bad_key_check"},
	{ErrTooManyReceipts, "too_many_receipts"},
	{ErrBadSnapshot, "bad_snapshot"},
	{ErrNotBootstrapped, "not_bootstrapped"},
	{ErrAlreadyBootstrapped, "already_bootstrapped"},
	{ErrClusterMismatch, "cluster_mismatch"},
	{ErrNotMember, "not_member"},
	{ErrNotActive, "not_active"},
	{ErrAlreadyMember, "already_member"},
	{ErrMemberRemoved, "member_removed"},
	{ErrLastMember, "last_member"},
	{ErrDuplicateInvite, "duplicate_invite"},
	{ErrTooManyInvites, "too_many_invites"},
	{ErrUnknownInvite, "unknown_invite"},
	{ErrInviteUsed, "invite_used"},
	{ErrInviteExpired, "invite_expired"},
	{ErrInviteRevoked, "invite_revoked"},
	{ErrGenerationOpen, "generation_open"},
	{ErrUnknownGeneration, "unknown_generation"},
	{ErrGenerationNotOpen, "generation_not_open"},
	{ErrGenerationNotCommitted, "generation_not_committed"},
	{ErrGenerationCommitted, "generation_committed"},
	{ErrGenerationAborted, "generation_aborted"},
	{ErrGenerationRetired, "generation_retired"},
	{ErrInvalidState, "invalid_state"},
	{ErrDeadlineNotReached, "deadline_not_reached"},
	{ErrRetireCurrent, "retire_current"},
	{ErrRetentionRequired, "retention_required"},
	{ErrOwnerNotInGeneration, "owner_not_in_generation"},
	{ErrHolderNotInGeneration, "holder_not_in_generation"},
	{ErrOwnerRemoved, "owner_removed"},
	{ErrHolderRemoved, "holder_removed"},
	{ErrDuplicateReceipt, "duplicate_receipt"},
	{ErrNoReceipt, "no_receipt"},
	{ErrNotEscrowed, "not_escrowed"},
	{ErrKeyCheckMismatch, "key_check_mismatch"},
	{ErrInternal, "internal"},
	{ErrBadRetention, "bad_retention"},
	{ErrMemberLapsed, "member_lapsed"},
	{ErrOwnerLapsed, "owner_lapsed"},
	{ErrHolderLapsed, "holder_lapsed"},
	{ErrBadCommandSignature, "bad_command_signature"},
	{ErrReplay, "replay"},
	{ErrClockSkew, "clock_skew"},
	{ErrNotAuthor, "not_author"},
	{ErrUnauthorized, "unauthorized"},
	{ErrMemberSuspended, "member_suspended"},
	{ErrBadInviteProof, "bad_invite_proof"},
	{ErrBadInviteKey, "bad_invite_key"},
	{ErrInviteTTL, "invite_ttl"},
	{ErrBadTimeout, "bad_timeout"},
	{ErrDirectAdmission, "direct_admission"},
	{ErrTooFewMembers, "too_few_members"},
	{ErrSelfVote, "self_vote"},
	{ErrNotSuspended, "not_suspended"},
	{ErrBadSplit, "bad_split"},
	{ErrSplitMismatch, "split_mismatch"},
	{ErrOwnerSuspended, "owner_suspended"},
	{ErrInvalidMemberStatus, "invalid_member_status"},
}

// ErrorCode returns the stable short code of the sentinel err wraps, or ""
// if err is nil or wraps none of them.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	for _, e := range errorCodes {
		if errors.Is(err, e.err) {
			return e.code
		}
	}
	return ""
}

// ErrorByCode returns the sentinel with the given code, or nil if the code is
// unknown.
func ErrorByCode(code string) error {
	for _, e := range errorCodes {
		if e.code == code {
			return e.err
		}
	}
	return nil
}
