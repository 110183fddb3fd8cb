using System.Diagnostics;
using System.Runtime.CompilerServices;

namespace Hetmem.Mm;

/// <summary>What an interval-tree walk does with each intersecting notifier; return false to stop the walk.</summary>
internal interface IIntervalVisitor
{
    bool Visit(MmuIntervalNotifier sub);
}

/// <summary>
/// The interval notifiers of one address space (kernel: the <c>itree</c> of mmu_notifier_subscriptions, an
/// augmented rb-tree from include/linux/interval_tree.h). An intrusive AVL tree ordered by (Start, id) whose nodes are
/// the notifiers themselves, each carrying the largest End of its subtree, so insert and remove are O(log n),
/// allocate nothing, and finding the k notifiers that intersect a range is O(log n + k).
/// </summary>
/// <remarks>
/// Locking: modified only under the <see cref="MmuNotifierSubscriptions"/> lock and only while the address-space
/// sequence is even. Walks run under that lock, or lock-free while the sequence is odd (the tree is then frozen:
/// inserts and removes are deferred), exactly like the kernel walks its itree without the spinlock.
/// </remarks>
internal sealed class MmuIntervalTree
{
    private MmuIntervalNotifier? _root;   // see remarks

    /// <summary>Number of notifiers in the tree.</summary>
    public int Count { get; private set; }

    /// <summary>Height of the tree (0 when empty); O(log n) by construction.</summary>
    public int Height => H(_root);

    /// <summary>Adds <paramref name="sub"/> (not in the tree).</summary>
    public void Insert(MmuIntervalNotifier sub)
    {
        sub._left = sub._right = null;
        sub._height = 1;
        sub._subtreeMaxEnd = sub.End;
        _root = Insert(_root, sub);
        Count++;
    }

    /// <summary>Removes <paramref name="sub"/> (in the tree).</summary>
    public void Remove(MmuIntervalNotifier sub)
    {
        _root = Remove(_root, sub, out bool found);
        Debug.Assert(found, "removing a notifier that is not in the interval tree");
        if (found)
        {
            Count--;
        }
        sub._left = sub._right = null;
    }

    /// <summary>True when any notifier intersects [start, end) (kernel: interval_tree_iter_first != NULL).</summary>
    public bool AnyIntersecting(ulong start, ulong end)
    {
        MmuIntervalNotifier? n = _root;
        while (n is not null)
        {
            if (n._subtreeMaxEnd <= start)
            {
                return false;
            }
            if (n._left is not null && n._left._subtreeMaxEnd > start)
            {
                n = n._left;
                continue;
            }
            if (n.Start >= end)
            {
                return false;
            }
            if (n.End > start)
            {
                return true;
            }
            n = n._right;
        }
        return false;
    }

    /// <summary>Calls <paramref name="visitor"/> for each notifier intersecting [start, end) in address order; false when it stopped the walk.</summary>
    public bool VisitIntersecting<TVisitor>(ulong start, ulong end, ref TVisitor visitor)
        where TVisitor : struct, IIntervalVisitor
        => Visit(_root, start, end, ref visitor);

    private static bool Visit<TVisitor>(MmuIntervalNotifier? n, ulong start, ulong end, ref TVisitor visitor)
        where TVisitor : struct, IIntervalVisitor
    {
        while (n is not null && n._subtreeMaxEnd > start)
        {
            if (!Visit(n._left, start, end, ref visitor))
            {
                return false;
            }
            if (n.Start >= end)
            {
                return true; // everything to the right starts even later
            }
            if (n.End > start && !visitor.Visit(n))
            {
                return false;
            }
            n = n._right;
        }
        return true;
    }

    /// <summary>Checks ordering, balance and the augmentation of every node (tests and debug builds).</summary>
    public void Validate()
    {
        int count = 0;
        Check(_root, ulong.MinValue, long.MinValue, ref count);
        if (count != Count)
        {
            throw new InvalidOperationException($"interval tree counts {Count} notifiers but holds {count}");
        }
    }

    private static (int Height, ulong MaxEnd) Check(MmuIntervalNotifier? n, ulong minStart, long minId, ref int count)
    {
        if (n is null)
        {
            return (0, 0);
        }
        count++;
        (int lh, ulong lm) = Check(n._left, minStart, minId, ref count);
        if (n.Start < minStart)
        {
            throw new InvalidOperationException($"interval tree out of order at {n}");
        }
        (int rh, ulong rm) = Check(n._right, n.Start, n._id, ref count);
        int h = Math.Max(lh, rh) + 1;
        ulong m = Math.Max(n.End, Math.Max(lm, rm));
        if (h != n._height || m != n._subtreeMaxEnd || Math.Abs(lh - rh) > 1)
        {
            throw new InvalidOperationException($"interval tree node {n} has height {n._height}/{h}, max end 0x{n._subtreeMaxEnd:x}/0x{m:x}, balance {lh - rh}");
        }
        return (h, m);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int H(MmuIntervalNotifier? n) => n?._height ?? 0;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool Less(MmuIntervalNotifier a, MmuIntervalNotifier b) => a.Start < b.Start || a.Start == b.Start && a._id < b._id;

    private static void Update(MmuIntervalNotifier n)
    {
        n._height = Math.Max(H(n._left), H(n._right)) + 1;
        ulong m = n.End;
        if (n._left is not null && n._left._subtreeMaxEnd > m)
        {
            m = n._left._subtreeMaxEnd;
        }
        if (n._right is not null && n._right._subtreeMaxEnd > m)
        {
            m = n._right._subtreeMaxEnd;
        }
        n._subtreeMaxEnd = m;
    }

    private static MmuIntervalNotifier RotateRight(MmuIntervalNotifier n)
    {
        MmuIntervalNotifier l = n._left!;
        n._left = l._right;
        l._right = n;
        Update(n);
        Update(l);
        return l;
    }

    private static MmuIntervalNotifier RotateLeft(MmuIntervalNotifier n)
    {
        MmuIntervalNotifier r = n._right!;
        n._right = r._left;
        r._left = n;
        Update(n);
        Update(r);
        return r;
    }

    private static MmuIntervalNotifier Balance(MmuIntervalNotifier n)
    {
        Update(n);
        int bf = H(n._left) - H(n._right);
        if (bf > 1)
        {
            if (H(n._left!._left) < H(n._left._right))
            {
                n._left = RotateLeft(n._left);
            }
            return RotateRight(n);
        }
        if (bf < -1)
        {
            if (H(n._right!._right) < H(n._right._left))
            {
                n._right = RotateRight(n._right);
            }
            return RotateLeft(n);
        }
        return n;
    }

    private static MmuIntervalNotifier Insert(MmuIntervalNotifier? n, MmuIntervalNotifier sub)
    {
        if (n is null)
        {
            return sub;
        }
        if (Less(sub, n))
        {
            n._left = Insert(n._left, sub);
        }
        else
        {
            n._right = Insert(n._right, sub);
        }
        return Balance(n);
    }

    private static MmuIntervalNotifier? Remove(MmuIntervalNotifier? n, MmuIntervalNotifier sub, out bool found)
    {
        if (n is null)
        {
            found = false;
            return null;
        }
        if (ReferenceEquals(n, sub))
        {
            found = true;
            if (n._left is null)
            {
                return n._right;
            }
            if (n._right is null)
            {
                return n._left;
            }
            // Replace n by its in-order successor (the leftmost node of the right subtree).
            MmuIntervalNotifier? right = RemoveMin(n._right, out MmuIntervalNotifier min);
            min._right = right;
            min._left = n._left;
            return Balance(min);
        }
        if (Less(sub, n))
        {
            n._left = Remove(n._left, sub, out found);
        }
        else
        {
            n._right = Remove(n._right, sub, out found);
        }
        return Balance(n);
    }

    private static MmuIntervalNotifier? RemoveMin(MmuIntervalNotifier n, out MmuIntervalNotifier min)
    {
        if (n._left is null)
        {
            min = n;
            return n._right;
        }
        n._left = RemoveMin(n._left, out min);
        return Balance(n);
    }
}
