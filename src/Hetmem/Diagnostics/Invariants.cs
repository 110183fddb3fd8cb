using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace Hetmem.Diagnostics;

/// <summary>
/// Invariant checks (kernel: VM_BUG_ON / VM_WARN_ON under CONFIG_DEBUG_VM; gVisor: the checkInvariants switch).
/// Two kinds:
/// <list type="bullet">
/// <item><see cref="Assert(bool, string)"/>: compiled only into builds that define <c>HETMEM_INVARIANTS</c> (Debug);
/// the call and its arguments vanish from Release builds.</item>
/// <item><see cref="Check(bool, string)"/> and <c>if (Invariants.Enabled) { … }</c> blocks: compiled into every build,
/// run only while the <see cref="Enabled"/> switch is on (always in Debug and in stress runs).</item>
/// </list>
/// A failed invariant throws <see cref="InvariantViolationException"/>.
/// </summary>
/// <remarks>Locking: the switch is a volatile bool; the violation count is atomic.</remarks>
public static class Invariants
{
    private static bool s_enabled = DefaultEnabled(); // Volatile
    private static long s_violations;                 // Interlocked

    /// <summary>
    /// The run-time switch for always-compiled checks. On by default in builds with <c>HETMEM_INVARIANTS</c> and when
    /// the environment variable <c>HETMEM_INVARIANTS</c> is <c>1</c>; stress runs turn it on.
    /// </summary>
    public static bool Enabled
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Volatile.Read(ref s_enabled);
        set => Volatile.Write(ref s_enabled, value);
    }

    /// <summary>True when this library was compiled with <c>HETMEM_INVARIANTS</c> (its asserts are live).</summary>
    public static bool CompiledIn =>
#if HETMEM_INVARIANTS
        true;
#else
        false;
#endif

    /// <summary>Number of violations reported since the process started (including caught ones).</summary>
    public static long Violations => Interlocked.Read(ref s_violations);

    private static bool DefaultEnabled() =>
        CompiledIn || Environment.GetEnvironmentVariable("HETMEM_INVARIANTS") is "1" or "true";

    /// <summary>Fails when <paramref name="condition"/> is false. Only in builds that define <c>HETMEM_INVARIANTS</c>.</summary>
    /// <param name="condition">The invariant.</param>
    /// <param name="message">What was violated; name the object and the rule.</param>
    /// <exception cref="InvariantViolationException">When the condition is false.</exception>
    [Conditional("HETMEM_INVARIANTS")]
    public static void Assert([DoesNotReturnIf(false)] bool condition, string message)
    {
        if (!condition)
        {
            Fail(message);
        }
    }

    /// <summary>
    /// Fails when <paramref name="condition"/> is false, formatting the interpolated message only then (no
    /// allocation when the invariant holds). Only in builds that define <c>HETMEM_INVARIANTS</c>.
    /// </summary>
    /// <param name="condition">The invariant.</param>
    /// <param name="message">An interpolated message, e.g. <c>$"frame 0x{pfn:x} mapped {n} times"</c>.</param>
    /// <exception cref="InvariantViolationException">When the condition is false.</exception>
    [Conditional("HETMEM_INVARIANTS")]
    public static void Assert([DoesNotReturnIf(false)] bool condition,
        [InterpolatedStringHandlerArgument(nameof(condition))] ref InvariantMessageHandler message)
    {
        if (!condition)
        {
            Fail(message.ToStringAndClear());
        }
    }

    /// <summary>Fails when <see cref="Enabled"/> is on and <paramref name="condition"/> is false. Compiled into every build.</summary>
    /// <param name="condition">The invariant.</param>
    /// <param name="message">What was violated.</param>
    /// <exception cref="InvariantViolationException">When checks are enabled and the condition is false.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Check(bool condition, string message)
    {
        if (!condition && Enabled)
        {
            Fail(message);
        }
    }

    /// <summary>
    /// Fails when <see cref="Enabled"/> is on and <paramref name="condition"/> is false, formatting the message only
    /// then. Compiled into every build.
    /// </summary>
    /// <param name="condition">The invariant.</param>
    /// <param name="message">An interpolated message.</param>
    /// <exception cref="InvariantViolationException">When checks are enabled and the condition is false.</exception>
    public static void Check(bool condition, [InterpolatedStringHandlerArgument(nameof(condition))] ref InvariantMessageHandler message)
    {
        if (!condition && Enabled)
        {
            Fail(message.ToStringAndClear());
        }
    }

    /// <summary>Reports a violation unconditionally.</summary>
    /// <param name="message">What was violated.</param>
    /// <exception cref="InvariantViolationException">Always.</exception>
    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void Fail(string message)
    {
        Interlocked.Increment(ref s_violations);
        TraceLog.Instant(TraceCategory.Other, "invariant violation");
        throw new InvariantViolationException(message);
    }
}

/// <summary>
/// Builds an invariant message only when the invariant failed (the pattern of
/// <see cref="Debug.Assert(bool, ref Debug.AssertInterpolatedStringHandler)"/>). Used by the compiler for
/// <see cref="Invariants.Assert(bool, ref InvariantMessageHandler)"/>; not meant to be created directly.
/// </summary>
[InterpolatedStringHandler]
public ref struct InvariantMessageHandler
{
    private DefaultInterpolatedStringHandler _inner;
    private readonly bool _active;

    /// <summary>Creates the handler; <paramref name="shouldAppend"/> is false when <paramref name="condition"/> holds.</summary>
    public InvariantMessageHandler(int literalLength, int formattedCount, bool condition, out bool shouldAppend)
    {
        _active = !condition;
        _inner = _active ? new DefaultInterpolatedStringHandler(literalLength, formattedCount) : default;
        shouldAppend = _active;
    }

    /// <summary>Appends literal text.</summary>
    public void AppendLiteral(string value) => _inner.AppendLiteral(value);

    /// <summary>Appends a value.</summary>
    public void AppendFormatted<T>(T value) => _inner.AppendFormatted(value);

    /// <summary>Appends a value with a format string (e.g. <c>x</c> for hex).</summary>
    public void AppendFormatted<T>(T value, string? format) => _inner.AppendFormatted(value, format);

    /// <summary>Appends a value with an alignment.</summary>
    public void AppendFormatted<T>(T value, int alignment) => _inner.AppendFormatted(value, alignment);

    /// <summary>Appends a string.</summary>
    public void AppendFormatted(string? value) => _inner.AppendFormatted(value);

    /// <summary>Appends characters.</summary>
    public void AppendFormatted(ReadOnlySpan<char> value) => _inner.AppendFormatted(value);

    internal string ToStringAndClear() => _active ? _inner.ToStringAndClear() : string.Empty;
}

/// <summary>An invariant of Hetmem was violated: a bug in Hetmem or in a caller that broke a documented obligation.</summary>
public class InvariantViolationException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What was violated.</param>
    public InvariantViolationException(string message) : base(message)
    {
    }
}
