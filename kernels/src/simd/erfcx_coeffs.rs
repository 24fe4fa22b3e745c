// Fitted by a float64 least-squares Chebyshev fit of `erfcx(t) * (1 + 2t)` in `w = (t-2)/(t+2)`
// over w in [-1, 1) (t in [0, inf)), degree 12, converted to the power basis; evaluated in f32
// by Horner the relative error of erfcx is below 2.3e-7 on t in [0, 1e4]; the kernels evaluate it
// by Estrin's scheme (`estrin12`), whose error the activation tests hold to the same bounds.
const ERFCX_COEFFS: [f32; 13] = [
    -2.025_593_7e-5,
    6.336_948e-5,
    2.215_714e-4,
    -3.579_205e-4,
    -1.464_070_8e-3,
    1.217_410_7e-3,
    8.724_607_5e-3,
    -8.018_963e-3,
    -5.422_026_7e-2,
    0.164_049_46,
    -0.166_030_38,
    -9.276_376e-2,
    1.276_978_4,
];
