import Testing
@testable import MoERouting

/// Widening and narrowing over all 65,536 bit patterns of bf16 and fp16.
@Suite struct DTypeTests {
    @Test func bf16WideningIsTheUpperHalf() {
        for bits in 0...UInt16.max {
            let f = DType.bf16.widen(bits)
            #expect(f.bitPattern == UInt32(bits) << 16 || (f.isNaN && (bits & 0x7f80) == 0x7f80))
        }
    }

    @Test func fp16WideningMatchesFloat16() {
        for bits in 0...UInt16.max {
            let f = DType.fp16.widen(bits)
            let expected = Float(Float16(bitPattern: bits))
            #expect(f.bitPattern == expected.bitPattern || (f.isNaN && expected.isNaN), "\(bits)")
        }
    }

    @Test(arguments: [DType.bf16, DType.fp16])
    func narrowingRoundTripsEveryPattern(dtype: DType) {
        for bits in 0...UInt16.max {
            let f = dtype.widen(bits)
            let back = dtype.narrow(f)
            if f.isNaN {
                #expect(dtype.widen(back).isNaN, "NaN \(bits) must stay NaN")
            } else {
                #expect(back == bits, "\(dtype) \(bits)")
            }
        }
    }

    /// Between every pair of adjacent finite patterns: the midpoint rounds to the even one, and
    /// one fp32 ulp either side rounds to the nearer one.
    @Test(arguments: [DType.bf16, DType.fp16])
    func narrowingRoundsToNearestEven(dtype: DType) {
        for bits in 0...UInt16.max {
            let lo = dtype.widen(bits)
            guard lo.isFinite else { continue }
            let next = bits &+ 1 // next larger magnitude, same sign
            let hi = dtype.widen(next)
            guard hi.isFinite, next & 0x8000 == bits & 0x8000 else { continue }
            let mid = Float((Double(lo) + Double(hi)) / 2)
            let even = bits & 1 == 0 ? bits : next
            #expect(dtype.narrow(mid) == even, "\(dtype) midpoint above \(bits)")
            let below = mid > 0 ? mid.nextDown : mid.nextUp, above = mid > 0 ? mid.nextUp : mid.nextDown
            #expect(dtype.narrow(below) == bits)
            #expect(dtype.narrow(above) == next)
        }
    }

    @Test func fp16NarrowingMatchesFloat16OnEdgeCases() {
        let cases: [Float] = [0, -0.0, 65504, 65519.99, 65520, 65536, 1e9, -1e9, .infinity, -.infinity,
                              6.1035156e-05, 5.9604645e-08, 2.9802322e-08, 2.9802326e-08, 1e-10, -1e-10,
                              1.0009766, 1.0004883, 1.0014648, 0.1, 1 / 3]
        for x in cases {
            #expect(DType.fp16.narrow(x) == Float16(x).bitPattern, "\(x)")
        }
        var rng = SplitMix64(seed: 11)
        for _ in 0..<200_000 {
            let x = Float(bitPattern: UInt32.random(in: 0...UInt32.max, using: &rng))
            guard !x.isNaN else { continue }
            #expect(DType.fp16.narrow(x) == Float16(x).bitPattern, "\(x)")
        }
    }

    @Test func bf16OverflowAndNaN() {
        #expect(DType.bf16.narrow(.greatestFiniteMagnitude) == 0x7f80) // rounds up to +inf
        // The step from the largest finite bf16 (0x7f7f) to +inf: below the midpoint stays
        // finite; the midpoint itself is a tie and goes to the even neighbour, +inf.
        for sign: UInt32 in [0, 0x8000_0000] {
            let s16 = UInt16(sign >> 16)
            #expect(DType.bf16.narrow(Float(bitPattern: sign | 0x7f7f_7fff)) == s16 | 0x7f7f)
            #expect(DType.bf16.narrow(Float(bitPattern: sign | 0x7f7f_8000)) == s16 | 0x7f80)
            #expect(DType.bf16.narrow(Float(bitPattern: sign | 0x7f7f_8001)) == s16 | 0x7f80)
            #expect(DType.bf16.narrow(Float(bitPattern: sign | 0x7f7e_8000)) == s16 | 0x7f7e) // tie to even, finite
        }
        #expect(DType.bf16.narrow(-.infinity) == 0xff80)
        #expect(DType.bf16.widen(DType.bf16.narrow(.nan)).isNaN)
        #expect(DType.bf16.narrow(Float(bitPattern: 0x7f80_0001)) & 0x7f != 0) // signalling NaN stays NaN
    }

    @Test func names() {
        for d in DType.allCases { #expect(DType(name: d.description) == d) }
        #expect(DType(name: "bfloat16") == .bf16)
        #expect(DType(name: "int8") == nil)
    }
}
