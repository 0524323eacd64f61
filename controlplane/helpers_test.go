package controlplane_test

import "github.com/google/go-cmp/cmp"

func cmpDiff(want, got any, opts ...cmp.Option) string { return cmp.Diff(want, got, opts...) }
