//go:build !linux

package main

import "errors"

// releaseStartupPages is Linux only.
func releaseStartupPages() (before, after int64, err error) {
	return 0, 0, errors.ErrUnsupported
}
