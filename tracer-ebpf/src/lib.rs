// The library target only exists so that tracer/build.rs can name this crate as a
// build-dependency (aya-build rebuilds the [[bin]] object from it).
#![no_std]
