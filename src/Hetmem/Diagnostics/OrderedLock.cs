using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text;

namespace Hetmem.Diagnostics;

/// <summary>
/// A mutual-exclusion lock that carries a <see cref="LockClass"/>, plus the lock-order validator every Hetmem lock
/// reports to (kernel: lockdep; gVisor: pkg/sync/locking). The validator keeps a per-thread stack of held lock
/// classes and rejects an acquisition that would invert the order of the tree in LockOrder.cs (<see cref="LockClass"/>).
/// </summary>
/// <remarks>
/// <para><b>The rule</b> (a simplification of the tree in LockOrder.cs): a blocking acquisition of class <c>C</c> is
/// allowed only when <c>C</c> is deeper (a larger <see cref="LockClass"/> value) than every class the thread
/// holds; an equal class is allowed only for the nestable classes <see cref="LockClass.PageTable"/> (a walk holds
/// parent and child table locks) and <see cref="LockClass.Frame"/> (migration locks source and destination frames).
/// Try-acquisitions cannot deadlock, so they are not checked, but they are recorded as held.</para>
/// <para><b>Other lock types</b> (the mmap reader/writer semaphore, split page-table locks, frame bit locks, device
/// locks) call <see cref="Enter(LockClass, bool)"/> before blocking and <see cref="Exit(LockClass)"/> after
/// releasing.</para>
/// <para><b>Cost.</b> Validation is on in DEBUG builds and when the environment variable <c>HETMEM_LOCKDEP</c> is
/// <c>1</c>; stress runs turn it on with <see cref="ValidationEnabled"/> before taking any lock. Off, a report is
/// one volatile read.</para>
/// <para><b>Locking.</b> An <see cref="OrderedLock"/> is a monitor on a private object (not
/// <see cref="System.Threading.Lock"/>, which Coyote cannot control); the validator's state is thread-static.</para>
/// </remarks>
public sealed class OrderedLock
{
    private const int InitialStack = 16;

    private static bool s_validationEnabled = DefaultValidation(); // Volatile; set only while no thread holds a lock
    private static long s_violations;                              // Interlocked; lock-order violations detected

    [ThreadStatic] private static LockClass[]? t_held;  // classes held by this thread, in acquisition order
    [ThreadStatic] private static int t_depth;          // number of valid entries in t_held

    private readonly object _sync = new();              // the monitor

    /// <summary>Creates a lock of class <paramref name="lockClass"/>.</summary>
    /// <param name="lockClass">Its place in the lock order.</param>
    /// <param name="name">A name for error messages (defaults to the class name).</param>
    public OrderedLock(LockClass lockClass, string? name = null)
    {
        Class = lockClass;
        Name = name ?? lockClass.ToString();
    }

    /// <summary>The lock's class.</summary>
    public LockClass Class { get; }

    /// <summary>The lock's name.</summary>
    public string Name { get; }

    /// <summary>True when the calling thread holds this lock.</summary>
    public bool IsHeldByCurrentThread => Monitor.IsEntered(_sync);

    /// <summary>Takes the lock, validating the order first (so an inversion is reported instead of deadlocking).</summary>
    /// <exception cref="LockOrderViolationException">When validation is on and the order would be inverted.</exception>
    public void Enter()
    {
        Enter(Class);
        Monitor.Enter(_sync);
    }

    /// <summary>Takes the lock if it is free (not order-checked, since it cannot deadlock).</summary>
    /// <returns>True when the lock was taken.</returns>
    public bool TryEnter()
    {
        if (!Monitor.TryEnter(_sync))
        {
            return false;
        }
        Enter(Class, tryLock: true);
        return true;
    }

    /// <summary>Releases the lock.</summary>
    /// <exception cref="SynchronizationLockException">When the calling thread does not hold it.</exception>
    public void Exit()
    {
        Monitor.Exit(_sync);
        Exit(Class);
    }

    /// <summary>Takes the lock and returns a token that releases it on dispose (<c>using (l.EnterScope()) { … }</c>).</summary>
    /// <returns>The scope token.</returns>
    /// <exception cref="LockOrderViolationException">When validation is on and the order would be inverted.</exception>
    public Scope EnterScope()
    {
        Enter();
        return new Scope(this);
    }

    /// <summary>Asserts (DEBUG builds) that the calling thread holds this lock; for the entry of <c>…Locked</c> methods.</summary>
    /// <exception cref="InvariantViolationException">When it does not.</exception>
    [Conditional("DEBUG")]
    public void AssertHeld()
    {
        if (!Monitor.IsEntered(_sync))
        {
            Invariants.Fail($"{Name} ({Class}) must be held by the calling thread");
        }
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Name} ({Class})";

    /// <summary>The token of <see cref="EnterScope"/>; releases the lock once on dispose.</summary>
    public ref struct Scope
    {
        private OrderedLock? _lock;

        internal Scope(OrderedLock l) => _lock = l;

        /// <summary>Releases the lock (once).</summary>
        public void Dispose()
        {
            _lock?.Exit();
            _lock = null;
        }
    }

    // ---- the validator ----

    /// <summary>
    /// Turns the validator on or off. Change it only while no thread holds a reported lock (at start-up), or
    /// releases taken before the change will be reported as unbalanced.
    /// </summary>
    public static bool ValidationEnabled
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Volatile.Read(ref s_validationEnabled);
        set => Volatile.Write(ref s_validationEnabled, value);
    }

    private static bool DefaultValidation() =>
#if DEBUG
        true;
#else
        Environment.GetEnvironmentVariable("HETMEM_LOCKDEP") is "1" or "true";
#endif

    /// <summary>True when two locks of class <paramref name="lockClass"/> may be held at once by one thread.</summary>
    /// <param name="lockClass">The class.</param>
    /// <returns>True for <see cref="LockClass.PageTable"/> and <see cref="LockClass.Frame"/>.</returns>
    public static bool IsNestable(LockClass lockClass) => lockClass is LockClass.PageTable or LockClass.Frame;

    /// <summary>
    /// Reports that the calling thread is about to take (or, for <paramref name="tryLock"/>, has taken) a lock of class
    /// <paramref name="lockClass"/>. Call before blocking, so an inversion throws instead of deadlocking.
    /// </summary>
    /// <param name="lockClass">The class of the lock.</param>
    /// <param name="tryLock">True when the lock was taken by a try-acquisition (recorded, not checked).</param>
    /// <exception cref="LockOrderViolationException">When the acquisition would invert the lock order.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Enter(LockClass lockClass, bool tryLock = false)
    {
        if (Volatile.Read(ref s_validationEnabled))
        {
            EnterValidated(lockClass, tryLock);
        }
    }

    /// <summary>Reports that the calling thread released a lock of class <paramref name="lockClass"/> (any order).</summary>
    /// <param name="lockClass">The class of the lock.</param>
    /// <exception cref="LockOrderViolationException">When the thread holds no lock of that class.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Exit(LockClass lockClass)
    {
        if (Volatile.Read(ref s_validationEnabled))
        {
            ExitValidated(lockClass);
        }
    }

    /// <summary>True when the validator records the calling thread as holding a lock of <paramref name="lockClass"/>.</summary>
    /// <param name="lockClass">The class.</param>
    /// <returns>False also when validation is off.</returns>
    public static bool IsHeld(LockClass lockClass)
    {
        LockClass[]? held = t_held;
        for (int i = 0; i < t_depth; i++)
        {
            if (held![i] == lockClass)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>Number of locks the validator records the calling thread as holding.</summary>
    public static int HeldCount => t_depth;

    /// <summary>Asserts (DEBUG builds, validation on) that the calling thread holds a lock of <paramref name="lockClass"/>.</summary>
    /// <param name="lockClass">The class.</param>
    /// <exception cref="InvariantViolationException">When it does not.</exception>
    [Conditional("DEBUG")]
    public static void AssertHeld(LockClass lockClass)
    {
        if (ValidationEnabled && !IsHeld(lockClass))
        {
            Invariants.Fail($"a {lockClass} lock must be held (held: {DescribeHeld()})");
        }
    }

    /// <summary>Asserts (DEBUG builds, validation on) that the calling thread holds no lock at all (before calling callbacks).</summary>
    /// <exception cref="InvariantViolationException">When it holds one.</exception>
    [Conditional("DEBUG")]
    public static void AssertNoneHeld()
    {
        if (ValidationEnabled && t_depth != 0)
        {
            Invariants.Fail($"no lock may be held here (held: {DescribeHeld()})");
        }
    }

    /// <summary>The calling thread's held classes, outermost first, e.g. <c>MmapLock, PageTable</c>.</summary>
    /// <returns>The description, or <c>none</c>.</returns>
    public static string DescribeHeld()
    {
        if (t_depth == 0)
        {
            return "none";
        }
        var sb = new StringBuilder();
        for (int i = 0; i < t_depth; i++)
        {
            if (i > 0)
            {
                sb.Append(", ");
            }
            sb.Append(t_held![i]);
        }
        return sb.ToString();
    }

    private static void EnterValidated(LockClass lockClass, bool tryLock)
    {
        LockClass[] held = t_held ??= new LockClass[InitialStack];
        int depth = t_depth;
        if (!tryLock)
        {
            for (int i = 0; i < depth; i++)
            {
                LockClass h = held[i];
                if (h > lockClass || (h == lockClass && !IsNestable(lockClass)))
                {
                    Interlocked.Increment(ref s_violations);
                    throw new LockOrderViolationException(lockClass, h, DescribeHeld());
                }
            }
        }
        if (depth == held.Length)
        {
            Array.Resize(ref held, depth * 2);
            t_held = held;
        }
        held[depth] = lockClass;
        t_depth = depth + 1;
    }

    private static void ExitValidated(LockClass lockClass)
    {
        LockClass[]? held = t_held;
        int depth = t_depth;
        for (int i = depth - 1; i >= 0; i--)
        {
            if (held![i] == lockClass)
            {
                Array.Copy(held, i + 1, held, i, depth - i - 1);
                t_depth = depth - 1;
                return;
            }
        }
        throw new LockOrderViolationException($"releasing a {lockClass} lock that the thread does not hold (held: {DescribeHeld()})");
    }

    /// <summary>Number of lock-order violations detected since the process started.</summary>
    public static long Violations => Interlocked.Read(ref s_violations);
}

/// <summary>A lock was taken against the order of the tree in LockOrder.cs (<see cref="LockClass"/>), or released without being held.</summary>
public sealed class LockOrderViolationException : InvariantViolationException
{
    /// <summary>Creates the exception for an inverted acquisition.</summary>
    /// <param name="acquiring">The class being acquired.</param>
    /// <param name="held">The held class it conflicts with.</param>
    /// <param name="heldStack">The thread's held classes, outermost first.</param>
    public LockOrderViolationException(LockClass acquiring, LockClass held, string heldStack)
        : base(acquiring == held
            ? $"lock order violation: acquiring a second {acquiring} lock, which is not nestable (held: {heldStack})"
            : $"lock order violation: acquiring {acquiring} while holding {held}, which must be taken after it (held: {heldStack})")
    {
        Acquiring = acquiring;
        Held = held;
    }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What went wrong.</param>
    public LockOrderViolationException(string message) : base(message)
    {
    }

    /// <summary>The class being acquired, when the violation is an inversion.</summary>
    public LockClass? Acquiring { get; }

    /// <summary>The held class it conflicts with, when the violation is an inversion.</summary>
    public LockClass? Held { get; }
}
