using System.Collections.Immutable;
using System.Reflection;
using System.Reflection.Emit;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;
using Hetmem.Mm;

namespace Hetmem.Tests.Architecture;

/// <summary>
/// The layering of DESIGN.md, checked on the built assembly with System.Reflection.Metadata: a type of a lower layer
/// (root/Diagnostics &lt; Physical &lt; Storage &lt; Mm &lt; Hmm &lt; Devices) never references a type of a higher one — not
/// in base types, interfaces, field, method or local signatures, generic instantiations, or the tokens of method bodies.
/// </summary>
public class LayeringTests
{
    private static readonly (string Prefix, int Rank)[] s_layers =
    [
        ("Hetmem.Devices", 5),
        ("Hetmem.Hmm", 4),
        ("Hetmem.Mm", 3),
        ("Hetmem.Storage", 2),
        ("Hetmem.Physical", 1),
        ("Hetmem.Diagnostics", 0),
        ("Hetmem", 0),
    ];

    private static int? RankOf(string ns)
    {
        foreach ((string prefix, int rank) in s_layers)
        {
            if (ns == prefix || ns.StartsWith(prefix + ".", StringComparison.Ordinal))
            {
                return rank;
            }
        }
        return null;
    }

    [Fact]
    public void NoLowerLayerReferencesAHigherOne()
    {
        List<string> violations = FindViolations(typeof(AddressSpace).Assembly.Location);
        Assert.True(violations.Count == 0, "layering violations:\n" + string.Join("\n", violations.Take(50)));
    }

    [Fact]
    public void TheCheckerSeesReferencesFromMethodBodiesSignaturesAndBaseTypes()
    {
        // The checker must find the Mm → Storage and Mm → Physical references every address space has; this proves it
        // reads signatures and bodies (a checker that sees nothing would pass the real test vacuously).
        using var pe = new PEReader(File.OpenRead(typeof(AddressSpace).Assembly.Location));
        MetadataReader md = pe.GetMetadataReader();
        var edges = new HashSet<(string From, string To)>();
        foreach (TypeDefinitionHandle th in md.TypeDefinitions)
        {
            string from = NamespaceOf(md, th);
            foreach (TypeDefinitionHandle target in ReferencedTypes(pe, md, th))
            {
                edges.Add((from, NamespaceOf(md, target)));
            }
        }
        Assert.Contains(("Hetmem.Mm", "Hetmem.Storage"), edges);
        Assert.Contains(("Hetmem.Mm", "Hetmem.Physical"), edges);
        Assert.Contains(("Hetmem.Hmm", "Hetmem.Mm"), edges);
    }

    private static List<string> FindViolations(string assemblyPath)
    {
        using var pe = new PEReader(File.OpenRead(assemblyPath));
        MetadataReader md = pe.GetMetadataReader();
        var violations = new SortedSet<string>(StringComparer.Ordinal);
        foreach (TypeDefinitionHandle th in md.TypeDefinitions)
        {
            string from = NamespaceOf(md, th);
            if (RankOf(from) is not int fromRank)
            {
                continue;
            }
            foreach (TypeDefinitionHandle target in ReferencedTypes(pe, md, th))
            {
                string to = NamespaceOf(md, target);
                if (RankOf(to) is int toRank && toRank > fromRank)
                {
                    violations.Add($"{FullName(md, th)} ({from}) references {FullName(md, target)} ({to})");
                }
            }
        }
        return [.. violations];
    }

    private static string NamespaceOf(MetadataReader md, TypeDefinitionHandle h)
    {
        TypeDefinition t = md.GetTypeDefinition(h);
        while (t.IsNested)
        {
            t = md.GetTypeDefinition(t.GetDeclaringType());
        }
        return md.GetString(t.Namespace);
    }

    private static string FullName(MetadataReader md, TypeDefinitionHandle h)
    {
        TypeDefinition t = md.GetTypeDefinition(h);
        string name = md.GetString(t.Name);
        return t.IsNested ? FullName(md, t.GetDeclaringType()) + "+" + name : md.GetString(t.Namespace) + "." + name;
    }

    /// <summary>Every type definition of this assembly that <paramref name="th"/> mentions.</summary>
    private static HashSet<TypeDefinitionHandle> ReferencedTypes(PEReader pe, MetadataReader md, TypeDefinitionHandle th)
    {
        var found = new HashSet<TypeDefinitionHandle>();
        var provider = new Collector(found);
        TypeDefinition t = md.GetTypeDefinition(th);
        AddEntity(md, t.BaseType, found, provider);
        foreach (InterfaceImplementationHandle ih in t.GetInterfaceImplementations())
        {
            AddEntity(md, md.GetInterfaceImplementation(ih).Interface, found, provider);
        }
        foreach (FieldDefinitionHandle fh in t.GetFields())
        {
            md.GetFieldDefinition(fh).DecodeSignature(provider, null);
        }
        foreach (MethodDefinitionHandle mh in t.GetMethods())
        {
            MethodDefinition m = md.GetMethodDefinition(mh);
            m.DecodeSignature(provider, null);
            if (m.RelativeVirtualAddress == 0)
            {
                continue;
            }
            MethodBodyBlock body = pe.GetMethodBody(m.RelativeVirtualAddress);
            if (!body.LocalSignature.IsNil)
            {
                md.GetStandaloneSignature(body.LocalSignature).DecodeLocalSignature(provider, null);
            }
            foreach (int token in IlTokens(body.GetILBytes() ?? []))
            {
                AddEntity(md, MetadataTokens.EntityHandle(token), found, provider);
            }
        }
        return found;
    }

    private static void AddEntity(MetadataReader md, EntityHandle h, HashSet<TypeDefinitionHandle> found, Collector provider)
    {
        if (h.IsNil)
        {
            return;
        }
        switch (h.Kind)
        {
            case HandleKind.TypeDefinition:
                found.Add((TypeDefinitionHandle)h);
                break;
            case HandleKind.TypeSpecification:
                md.GetTypeSpecification((TypeSpecificationHandle)h).DecodeSignature(provider, null);
                break;
            case HandleKind.MethodDefinition:
                found.Add(md.GetMethodDefinition((MethodDefinitionHandle)h).GetDeclaringType());
                break;
            case HandleKind.FieldDefinition:
                found.Add(md.GetFieldDefinition((FieldDefinitionHandle)h).GetDeclaringType());
                break;
            case HandleKind.MemberReference:
                MemberReference mr = md.GetMemberReference((MemberReferenceHandle)h);
                AddEntity(md, mr.Parent, found, provider);
                if (mr.GetKind() == MemberReferenceKind.Method)
                {
                    mr.DecodeMethodSignature(provider, null);
                }
                else
                {
                    mr.DecodeFieldSignature(provider, null);
                }
                break;
            case HandleKind.MethodSpecification:
                MethodSpecification ms = md.GetMethodSpecification((MethodSpecificationHandle)h);
                AddEntity(md, ms.Method, found, provider);
                ms.DecodeSignature(provider, null);
                break;
            case HandleKind.StandaloneSignature:
                StandaloneSignature ss = md.GetStandaloneSignature((StandaloneSignatureHandle)h);
                if (ss.GetKind() == StandaloneSignatureKind.Method)
                {
                    ss.DecodeMethodSignature(provider, null);
                }
                break;
        }
    }

    private static readonly Dictionary<short, OperandType> s_opcodes = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value, o => o.OperandType);

    /// <summary>The metadata tokens in an IL stream.</summary>
    private static IEnumerable<int> IlTokens(byte[] il)
    {
        int i = 0;
        while (i < il.Length)
        {
            short code = il[i] == 0xFE ? (short)(0xFE00 | il[i + 1]) : il[i];
            i += il[i] == 0xFE ? 2 : 1;
            OperandType ot = s_opcodes[code];
            switch (ot)
            {
                case OperandType.InlineField:
                case OperandType.InlineMethod:
                case OperandType.InlineTok:
                case OperandType.InlineType:
                case OperandType.InlineSig:
                    yield return BitConverter.ToInt32(il, i);
                    i += 4;
                    break;
                case OperandType.InlineNone:
                    break;
                case OperandType.ShortInlineBrTarget:
                case OperandType.ShortInlineI:
                case OperandType.ShortInlineVar:
                    i += 1;
                    break;
                case OperandType.InlineVar:
                    i += 2;
                    break;
                case OperandType.InlineI8:
                case OperandType.InlineR:
                    i += 8;
                    break;
                case OperandType.InlineSwitch:
                    int n = BitConverter.ToInt32(il, i);
                    i += 4 + 4 * n;
                    break;
                default:
                    i += 4;   // InlineBrTarget, InlineI, InlineString, ShortInlineR
                    break;
            }
        }
    }

    /// <summary>A signature decoder that records every type definition a signature mentions.</summary>
    private sealed class Collector(HashSet<TypeDefinitionHandle> found) : ISignatureTypeProvider<int, object?>
    {
        public int GetTypeFromDefinition(MetadataReader reader, TypeDefinitionHandle handle, byte rawTypeKind)
        {
            found.Add(handle);
            return 0;
        }

        public int GetTypeFromReference(MetadataReader reader, TypeReferenceHandle handle, byte rawTypeKind) => 0;

        public int GetTypeFromSpecification(MetadataReader reader, object? genericContext, TypeSpecificationHandle handle, byte rawTypeKind)
            => reader.GetTypeSpecification(handle).DecodeSignature(this, genericContext);

        public int GetSZArrayType(int elementType) => 0;

        public int GetArrayType(int elementType, ArrayShape shape) => 0;

        public int GetByReferenceType(int elementType) => 0;

        public int GetPointerType(int elementType) => 0;

        public int GetPinnedType(int elementType) => 0;

        public int GetGenericInstantiation(int genericType, ImmutableArray<int> typeArguments) => 0;

        public int GetGenericMethodParameter(object? genericContext, int index) => 0;

        public int GetGenericTypeParameter(object? genericContext, int index) => 0;

        public int GetFunctionPointerType(MethodSignature<int> signature) => 0;

        public int GetModifiedType(int modifier, int unmodifiedType, bool isRequired) => 0;

        public int GetPrimitiveType(PrimitiveTypeCode typeCode) => 0;
    }
}
