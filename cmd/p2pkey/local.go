package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/p2pkey/p2pkey/node"
	"github.com/spf13/cobra"
)

// The local surface (issue 11): where the invite comes from, how long an
// invite lives, and who may reach the data directory.

// maxInviteInput bounds what --join - and --join-file read; an invite is a
// few hundred bytes.
const maxInviteInput = 64 << 10

// joinWarning is printed when the invite is on the command line.
const joinWarning = "p2pkey: warning: the invite given with --join is visible to every local user in the process list " +
	"(ps, /proc/PID/cmdline) for as long as the daemon runs; use --join-file FILE or --join - (stdin) instead\n"

// readInvite returns the invite token the daemon was given, from --join
// TOKEN, --join - (one line of stdin) or --join-file FILE, trimmed, or ""
// when there is none. Giving more than one source, or one with --bootstrap,
// is a usage error.
func readInvite(cmd *cobra.Command, bootstrap bool, join, joinFile string) (string, error) {
	usage := func(format string, a ...any) error {
		return &statusError{code: exitUsage, err: fmt.Errorf(format, a...)}
	}
	flags := cmd.Flags()
	hasJoin, hasFile := flags.Changed("join"), flags.Changed("join-file")
	switch {
	case hasJoin && hasFile:
		return "", usage("--join and --join-file are mutually exclusive")
	case bootstrap && (hasJoin || hasFile):
		return "", usage("--bootstrap and --join are mutually exclusive")
	case hasJoin && join == "", hasFile && joinFile == "":
		return "", usage("--join and --join-file need a value (--join - reads the invite from stdin)")
	}
	var token, from string
	switch {
	case hasFile:
		from = joinFile
		f, err := os.Open(joinFile)
		if err != nil {
			return "", fmt.Errorf("--join-file: %w", err)
		}
		defer f.Close()
		data, err := io.ReadAll(io.LimitReader(f, maxInviteInput))
		if err != nil {
			return "", fmt.Errorf("--join-file: %w", err)
		}
		token = string(data)
	case join == "-":
		from = "stdin"
		in := cmd.InOrStdin()
		if isTerminal(in) {
			fmt.Fprint(cmd.ErrOrStderr(), "paste the invite and press Enter: ")
		}
		line, err := bufio.NewReader(io.LimitReader(in, maxInviteInput)).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("--join -: read stdin: %w", err)
		}
		token = line
	case hasJoin:
		fmt.Fprint(cmd.ErrOrStderr(), joinWarning)
		return strings.TrimSpace(join), nil
	default:
		return "", nil
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", usage("no invite in %s", from)
	}
	return token, nil
}

// checkTTL applies the invite lifetime bounds to --ttl.
func checkTTL(ttl time.Duration) error {
	switch {
	case ttl < node.MinInviteTTL:
		return &statusError{code: exitUsage, err: fmt.Errorf("--ttl must be at least %v (got %v): a shorter invite expires before a joiner can use it", node.MinInviteTTL, ttl)}
	case ttl > node.MaxInviteTTL:
		return &statusError{code: exitUsage, err: fmt.Errorf("--ttl %v is over the cap of %v (7 days): a long-lived invite is a standing credential; issue one when the new node is ready", ttl, node.MaxInviteTTL)}
	}
	return nil
}

// secureDataDir refuses a data directory owned by another user and tightens
// one that group or others can reach, saying what it changed.
func secureDataDir(cmd *cobra.Command, dir string) error {
	changes, err := node.SecureDataDir(dir)
	for _, c := range changes {
		fmt.Fprintf(cmd.ErrOrStderr(), "p2pkey: %s: group and others must not reach a node's data\n", c)
	}
	return err
}
