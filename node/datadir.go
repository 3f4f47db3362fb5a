package node

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// ErrForeignOwner means the data directory, or the identity in it, belongs
// to another user. Such a user could read the identity (and so open this
// node's envelopes) or swap files under the node, so the node refuses it.
var ErrForeignOwner = errors.New("not owned by this user")

// PermChange is one permission SecureDataDir tightened.
type PermChange struct {
	Path     string
	From, To fs.FileMode
}

// String says what was tightened, for the operator.
func (c PermChange) String() string {
	return fmt.Sprintf("tightened %s from %04o to %04o", c.Path, c.From.Perm(), c.To.Perm())
}

// SecureDataDir checks dir, the node's data directory, and its identity.key
// before the node uses them. It refuses either when it is owned by a user
// other than the effective user (ErrForeignOwner), and takes every group and
// other permission off them: a directory that group or others may read,
// write or enter becomes 0700, an identity.key they may read or write becomes
// 0600. It returns what it changed so the caller can say so. A dir or
// identity.key that does not exist yet is not an error: Init and Start
// create them private.
//
// The checks and the chmod act on an open file descriptor (fstat, fchmod),
// so a path swapped between the check and the change is not what gets
// changed.
func SecureDataDir(dir string) ([]PermChange, error) {
	var changes []PermChange
	c, err := securePath(dir, true, 0o700)
	if err != nil || c == nil {
		return nil, err
	}
	if c.From != c.To {
		changes = append(changes, *c)
	}
	c, err = securePath(filepath.Join(dir, "identity.key"), false, 0o600)
	if err != nil {
		return changes, err
	}
	if c != nil && c.From != c.To {
		changes = append(changes, *c)
	}
	return changes, nil
}

// secureDataDir is SecureDataDir for node.Start: it logs each change and
// reports whether there was one.
func secureDataDir(dir string) (changed bool, err error) {
	changes, err := SecureDataDir(dir)
	for _, c := range changes {
		log.Warnw(c.String()+": group and others must not reach a node's data", "path", c.Path)
	}
	return len(changes) > 0, err
}

// securePath opens path, checks its owner and type, and clears its group
// and other permission bits. It returns nil, nil when path does not exist;
// otherwise the change, with From == To when nothing needed doing. want is
// the mode the caller expects (0700 or 0600), used only in messages.
func securePath(path string, isDir bool, want fs.FileMode) (*PermChange, error) {
	f, err := os.OpenFile(path, openFlags(isDir), 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("check %s: %w", path, err)
	}
	switch {
	case isDir && !fi.IsDir():
		return nil, fmt.Errorf("data directory %s is not a directory", path)
	case !isDir && !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if owner, ok := fileOwner(fi); ok {
		if uid := os.Geteuid(); owner != uid {
			return nil, fmt.Errorf("%s is owned by uid %d, this node runs as uid %d: %w; chown it to this user or use another --data directory",
				path, owner, uid, ErrForeignOwner)
		}
	}
	from := fi.Mode().Perm()
	to := from &^ 0o077
	if to != from {
		if err := f.Chmod(to); err != nil {
			return nil, fmt.Errorf("%s has mode %04o, which group or others can reach, and it could not be tightened to %04o: %w", path, from, want, err)
		}
	}
	return &PermChange{Path: path, From: from, To: to}, nil
}
