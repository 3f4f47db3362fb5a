// Package generations is the custody ledger: the whole replicated state of a
// p2pkey cluster, applied from the Raft log.
//
// # What it owns
//
// The cluster ID; the retention policy (the bound below); the members and
// their status (joining, active, removed, rejected, lapsed) and
// informational addresses; invites, by the SHA-256 hash of
// their secret only (rule J1); generations, their member sets M(g),
// thresholds t(g) = floor(|M(g)|/2)+1 and lifecycle; holder receipts
// (envelope digest and holder signature) per (generation, owner, holder);
// key-check values (rule K4); and the versioned protobuf encodings of log
// commands and snapshots (package pb, rules S4, S6).
//
// # What it must not touch
//
// A clock, randomness, the network, the disk or goroutines. Time comes in as
// the command's now field, stamped by the proposer; IDs come in as fields.
// The same command log therefore always gives the same state, and Snapshot
// is byte-deterministic. The ledger never holds share or envelope contents,
// nor K: only SHA-256 digests of envelopes and holders' signatures.
//
// # Applying commands
//
// Apply decodes one log entry (bounded by MaxCommandSize, version checked),
// validates every field, then checks the command against the state before
// mutating anything, so an error leaves the ledger unchanged. Every error
// wraps exactly one exported sentinel; ErrorCode and ErrorByCode map them to
// stable short codes for forwarding. Apply never panics: a recovered panic
// (a bug) becomes ErrInternal.
//
// Generation lifecycle, as a transition table (GenerationState.Next):
//
//	open ──commit──▶ committed ──retire──▶ retired
//	open ──abort───▶ aborted
//
// At most one generation is open (G2). OpenGeneration opens the next one
// with M = active ∪ joining members. ConsumeInvite with a deadline makes the
// joiner "joining" and opens a generation if none is open; otherwise the
// joiner waits for the next OpenGeneration (batching). ConsumeInvite with a
// zero deadline admits the joiner at once (direct admission).
//
// # Receipts and commit
//
// RecordReceipts is all-or-nothing: every receipt of the batch is checked
// (open generation, parties are members of it and neither removed nor
// lapsed, and active for the current generation; signature by the
// holder's key embedded in its peer ID over ReceiptMessage, no conflicting
// digest) before any is recorded; the first failing receipt's error, with its
// index, is returned. A receipt identical in digest to a recorded one is an
// idempotent duplicate (counted in Result.Duplicates; the first signature is
// kept). Receipts are recorded for the open generation and for the current
// (newest committed) generation: a member that missed the commit, because it
// was offline or its receipts landed after the majority, can still escrow in
// the current generation (G5), which is what lets older generations retire.
// Receipts for older committed, aborted or retired generations are refused.
//
// Commit is derived, never proposed: after a batch is recorded, the open
// generation g commits when at least t(g) members are escrowed in g (each has
// at least t(g) receipts, its self-receipt included), and every joiner of g
// is escrowed in g (J2) and is a recorded holder for at least t(g) owners of
// M(g) (J3). On commit its joiners become active (J4).
//
// # Abort
//
// AbortGeneration aborts the open generation once now >= its deadline (G3).
// Its receipts are deleted, its joiners become rejected, and Result.Rejected
// says, per joiner, what was missing (J5); the text is kept as the member's
// Reason. A rejected peer may join again with a new invite. Removal aborts
// too (below), without rejecting the other joiners.
//
// # Retirement (G4)
//
// Retirement is automatic: after every commit and every removal, each
// committed generation h older than the current one is retired when every
// active member of the current generation is escrowed with margin in some
// committed generation newer than h (late receipts into the current
// generation count). Escrowed with margin in g means that the owner's
// receipts of its one split in g number at least min(t(g)+1, |M(g)|): it
// can lose any one holder there, its own store included, and still have
// t(g) shares. Escrowed with exactly t(g) is not enough to let the older
// generation go: one lost disk would leave t(g)-1 shares in the new
// generation and none in the retired one (issue 12). A member escrowed with
// margin in no committed generation falls back to its newest escrow (h is
// retired once that is newer), so that nothing is retained forever because
// of it. Put together, each active member has a retention anchor, its newest
// generation with margin or else its newest escrow, and G4 retires the
// committed generations older than every anchor. The rule is computed from
// the receipts on every check and never stored, so snapshots and the log
// are unchanged by it. The retention bound below still overrides it; unlock
// (Coverage) and lapse go by the plain newest escrow.
// Retired generations keep their metadata but lose
// their receipts, and never come back. The RetireGeneration command only
// re-checks that rule through the log: since the ledger already retired every
// generation it allows, it reports why a generation is still retained
// (ErrRetentionRequired, ErrRetireCurrent, ...). RetentionBlockers names the
// members that hold a generation back.
//
// # Retention bound (the seed's open problem)
//
// G4 and G5 together let a member that was offline through several joins
// unlock with a majority of its older, smaller share set, and they keep that
// set for as long as it stays away. That is weaker (fewer, older holders
// suffice, and the set predates every membership change since) and it
// blocks retirement for everyone else. So the ledger bounds it,
// deterministically:
//
// A committed generation h older than the current one c is retired when G4
// allows it, or when h is more than MaxGenerationsBehind committed
// generations behind c: |{g in (h, c] : g committed or retired}| >
// MaxGenerationsBehind. Aborted generations do not count (nothing was
// re-shared in them, so an absent member missed nothing there); without
// aborts this is c - h > MaxGenerationsBehind. A generation that is an
// active member's newest escrow is kept past the bound for LapseGrace (one
// hour of the leader's time) after the first generation that member missed
// committed, and while a generation is open: a member down for a restart
// during a burst of joins and removals loses nothing. The bound is applied
// before G4, after every successful command (commits and SetRetention move
// the count, time moves the grace). Every active member whose newest escrow was a generation retired by
// the bound is escrowed nowhere any more and becomes lapsed, with Reason
// "lapsed: its newest escrowed generation N was retired by the retention
// bound (max K generations behind)":
//
//   - it is in M(g) of no new generation, and blocks no retirement;
//   - every receipt where it is the owner is deleted, so no holder may
//     serve its envelopes (ServeAllowed says ErrOwnerLapsed; Duties lists
//     it in DeleteLapsedOwners), and its key-check value is dropped;
//   - it records no receipt, as owner or holder (ErrOwnerLapsed,
//     ErrHolderLapsed), issues no invite and sets nothing
//     (ErrMemberLapsed);
//   - receipts where it is the holder are kept, and it may still serve
//     those envelopes to their owners: it is not distrusted, it really holds
//     them, and deleting them could take another active member below its
//     threshold in every retained generation, which G4 forbids. They go
//     when their generation retires;
//   - it must be invited again: ConsumeInvite accepts it as it accepts a
//     rejected peer, as a fresh joiner with the same identity (and, having
//     lost custody of its old K, usually a new K). Unlike a removed member it
//     is not revoked (invites it issued while active stay valid);
//     RemoveMember can still revoke it for good.
//
// An active member that was never escrowed (admitted directly, and absent
// since) has nothing to lapse and is not lapsed; it still cannot hold any
// generation back for longer than the bound.
//
// The policy is set at Bootstrap (0 means DefaultMaxGenerationsBehind, 3)
// and stored explicitly, so a later change of the default never changes an
// existing cluster. A ledger bootstrapped before the policy existed has the
// default. SetRetention changes it; only an active member may (ErrNotMember,
// ErrNotActive, ErrMemberRemoved, ErrMemberLapsed otherwise), and the
// bound is 1 to MaxGenerationsBehindLimit (ErrBadRetention). Lowering it is
// refused while a generation is open (ErrGenerationOpen), so that a lapsed
// member never sits in an open generation, and refused if it would lapse
// every active member (ErrLastMember). Raising it never brings a retired
// generation back. Coverage.Behind tells how far an owner's escrow is from
// lapsing.
//
// Member lifecycle, as a transition table (MemberStatus.Next; every change
// of a member's status goes through it):
//
//	invite ──▶ joining ──commit──▶ active ──bound──▶ lapsed
//	invite ──▶ active (direct admission, before the first generation; and the founder)
//	           joining ──abort───▶ rejected
//	rejected, lapsed ──invite──▶ joining
//	joining, active, lapsed ──remove──▶ removed (terminal)
//
// # Removal (R1)
//
// RemoveMember revokes a joining, active or lapsed member at once: it becomes
// removed, every receipt where it is owner or holder is deleted (so no holder
// may serve its envelopes and it no longer counts as a holder), and its
// key-check value is dropped. Invites it issued are refused from then on
// (ErrInviteRevoked). If the open generation contains it, that generation is
// aborted (its receipts deleted, its other joiners stay joining) and a new
// generation without it is opened with the given deadline; if none is open,
// one is opened. The open generation is left alone if it does not contain
// the removed peer. Removing the last active member is refused.
//
// # Key checks (K4)
//
// RecordKeyCheck is accepted from a joining or active owner that is escrowed
// in an open or committed generation, so a joiner can record it at its first
// escrow, before its generation commits. It is recorded once: the same value
// again is a no-op, a different one is ErrKeyCheckMismatch. It is dropped if
// the owner is rejected, removed or lapsed.
package generations
