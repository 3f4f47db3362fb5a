package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/p2pkey/p2pkey/node"
)

// What the control socket client returns is turned here into what an
// operator can act on: a lock is exit 3 and says why; a request that timed
// out says what the daemon is waiting for (no Raft leader, the key still
// locked) rather than `Post "http://p2pkey/v1/...": context deadline
// exceeded`; a dropped connection says the daemon went away.

// diagnoseTimeout bounds the status request made to explain a failure.
const diagnoseTimeout = 3 * time.Second

// explain turns err from the daemon client c, during what ("issue an
// invite"), which gave up after timeout, into an actionable error. needKey
// says the request needs the node's key, so a node still locked when the
// time ran out is a lock (exit 3).
func explain(c *node.Client, err error, what string, timeout time.Duration, needKey bool) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, node.ErrLocked) {
		return &statusError{code: exitLocked, err: errors.New(dedupe(err.Error()))}
	}
	var ue *url.Error
	if !errors.As(err, &ue) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	inner := err
	if ue != nil {
		inner = ue.Err
	}
	if !errors.Is(inner, context.DeadlineExceeded) && !errors.Is(inner, context.Canceled) {
		return fmt.Errorf("cannot %s: the daemon on %s closed the connection (%v); it may be shutting down or have crashed: see its log", what, c.Socket(), inner)
	}
	ctx, cancel := context.WithTimeout(context.Background(), diagnoseTimeout)
	defer cancel()
	st, serr := c.Status(ctx)
	var ae *node.APIError
	if serr != nil && errors.As(serr, &ae) {
		// An application key socket answers keys only: it cannot say why.
		if needKey {
			return &statusError{code: exitLocked, err: fmt.Errorf("the node did not release the key within %v: it is still locked (this socket does not say why: 'p2pkey status' as the daemon's user does)", timeout)}
		}
		return fmt.Errorf("cannot %s: no answer within %v from %s", what, timeout, c.Socket())
	}
	if serr != nil {
		return fmt.Errorf("cannot %s: the daemon on %s did not answer within %v, nor to a status request (%v); it is stuck or overloaded: see its log", what, c.Socket(), timeout, shortErr(serr))
	}
	if needKey && st.Lock != node.LockUnlocked {
		msg := fmt.Sprintf("the node is still %s after %v: %s", st.Lock, timeout, lockReason(st))
		if st.Raft.Leader == "" && !strings.Contains(msg, "removed") {
			msg += "; " + noLeaderShort(st)
		}
		return &statusError{code: exitLocked, err: errors.New(msg)}
	}
	if st.Raft.Leader == "" {
		return fmt.Errorf("cannot %s within %v: %s", what, timeout, noLeader(st))
	}
	return fmt.Errorf("cannot %s: no answer within %v (Raft leader %s, lock %s); try again with a longer timeout, or see the daemon's log", what, timeout, short(st.Raft.Leader), st.Lock)
}

// shortErr strips the url.Error wrapping ("Get "http://p2pkey/v1/status": ")
// from a client error.
func shortErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// noLeader says why a node knows no Raft leader and what to check.
func noLeader(st node.Status) string {
	// A node that has not heard from the cluster since it started knows its
	// members from disk only, without their Raft suffrage: count them all.
	anyVoter := false
	for _, m := range st.Members {
		anyVoter = anyVoter || m.Voter
	}
	voters, reach := 0, 0
	var away []string
	for _, m := range st.Members {
		if anyVoter && !m.Voter || m.Status == "removed" || m.Status == "rejected" {
			continue
		}
		voters++
		if m.Connection != "none" && m.Connection != "" {
			reach++
		} else {
			away = append(away, m.PeerID)
		}
	}
	if voters == 0 {
		return "this node knows no Raft leader and no voting member yet (it may still be starting or joining); check 'p2pkey status' and the daemon's log"
	}
	need := voters/2 + 1
	if reach >= need {
		return fmt.Sprintf("this node knows no Raft leader yet, though it reaches %d of %d voting members (a leader needs %d): an election may be under way; try again in a few seconds, and if it persists see the daemons' logs", reach, voters, need)
	}
	msg := fmt.Sprintf("there is no Raft leader, so the cluster cannot commit anything: this node reaches %d of %d voting members and a leader needs %d", reach, voters, need)
	if len(away) > 0 {
		msg += "; not reachable: " + strings.Join(away, ", ")
	}
	return msg + "; check that a majority of the members are running and can reach each other ('p2pkey members')"
}

// lockReason is why the node is locked, in words, without a doubled
// "locked:".
func lockReason(st node.Status) string {
	u := st.Unlock
	reason := strings.TrimPrefix(dedupe(u.Reason), "locked: ")
	if reason == "" && u.Need > 0 {
		reason = fmt.Sprintf("%s of %d gathered for generation %d", plural(u.Have, "share"), u.Need, u.Generation)
	}
	if reason == "" {
		reason = "no reason given"
	}
	return reason
}

// noLeaderShort is noLeader's first clause.
func noLeaderShort(st node.Status) string {
	s, _, _ := strings.Cut(noLeader(st), ";")
	return s
}

// dedupe removes the doubled words that come of wrapping a lock reason
// that already starts with "locked:" in another ("the node is locked:
// locked: 1 of 2 ...").
func dedupe(msg string) string {
	for _, d := range [][2]string{
		{"the node is locked: locked: ", "the node is locked: "},
		{"locked: locked: ", "locked: "},
		{"locked (locked: ", "locked ("},
	} {
		for strings.Contains(msg, d[0]) {
			msg = strings.ReplaceAll(msg, d[0], d[1])
		}
	}
	return msg
}

// plural is "1 share", "2 shares".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
