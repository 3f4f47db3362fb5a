package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/node"
)

// resolvePeer turns a command's PEER_ID argument into a peer ID. A full
// peer ID is taken as it is. Otherwise arg may be any form the tables
// print or an operator would type: a prefix of a member's ID ("12D3KooWQx"),
// or the short form "12D3KooW…x7Qd2a" (or with "..."), matched against the
// members this node knows. No match, or more than one, is a usage error
// that says which.
func resolvePeer(ctx context.Context, c *node.Client, st *node.Status, arg string) (peer.ID, error) {
	if id, err := peer.Decode(arg); err == nil {
		return id, nil
	}
	usage := func(format string, a ...any) (peer.ID, error) {
		return "", &statusError{code: exitUsage, err: fmt.Errorf(format, a...)}
	}
	if strings.TrimSpace(arg) == "" {
		return usage("an empty peer ID")
	}
	if st == nil {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		s, err := c.Status(sctx)
		if err != nil {
			return "", explain(c, err, "look up the members to match "+arg, 10*time.Second, false)
		}
		st = &s
	}
	matches := matchPeers(st.Members, arg)
	switch len(matches) {
	case 0:
		return usage("%q is not a peer ID, nor the start or short form of a member this node knows ('p2pkey members' lists them)", arg)
	case 1:
		return peer.Decode(matches[0])
	}
	return usage("%q matches %d members: %s; give more of the ID", arg, len(matches), strings.Join(matches, ", "))
}

// matchPeers lists the members whose ID arg abbreviates: a prefix, or
// PREFIX…SUFFIX (also PREFIX...SUFFIX).
func matchPeers(ms []node.MemberInfo, arg string) []string {
	prefix, suffix := arg, ""
	for _, sep := range []string{"…", "..."} {
		if p, s, ok := strings.Cut(arg, sep); ok {
			prefix, suffix = p, s
			break
		}
	}
	var out []string
	for _, m := range ms {
		id := m.PeerID
		if len(id) >= len(prefix)+len(suffix) && strings.HasPrefix(id, prefix) && strings.HasSuffix(id, suffix) {
			out = append(out, id)
		}
	}
	return out
}
